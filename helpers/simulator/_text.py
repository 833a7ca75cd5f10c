"""What the simulator says: deterministic answers, token counts and JSON that fits a schema.

No model, no download: answers come from rules a lesson can check (``Reply: X`` gives ``X``), a small
table of facts, simple arithmetic, and otherwise seeded filler text of the requested length.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from typing import Any

# count_tokens works on bytes, in C: every character becomes its kind (a letter, a digit, a space, anything
# else), then runs are counted with bytes.count. About 5 ms a megabyte, so no prompt can hold the server up.
_KINDS = bytearray(256)
for _byte in range(256):
    _char = chr(_byte)
    if _byte >= 0xC0:  # the first byte of a UTF-8 character beyond ASCII: a token of its own
        _KINDS[_byte] = ord("!")
    elif _char.isascii() and _char.isalpha():
        _KINDS[_byte] = ord("a")
    elif _char.isdigit():
        _KINDS[_byte] = ord("1")
    elif _char.isspace():
        _KINDS[_byte] = ord(" ")
    else:
        _KINDS[_byte] = ord("!")
_KINDS_TABLE = bytes(_KINDS)
_CONTINUATION = bytes(range(0x80, 0xC0))  # the further bytes of a UTF-8 character: dropped
_WIDE_SPACES = [chr(c).encode() for c in range(0x80, 0x3001) if chr(c).isspace()]  # e.g. U+00A0, U+3000


def count_tokens(text: str, stop: int | None = None) -> int:
    """Approximate an LLM tokenizer: a token per 6 letters of a run of letters (rounded up), per 3 digits of a run
    of digits, and one for every other character that is not a space (the rule of ``helpers.cpu.count_tokens``).

    With ``stop``, a text that surely has more than ``stop`` tokens is not counted to the end: the answer is then
    a number larger than ``stop`` (at most the true count), found in a few passes over the bytes."""
    data = text.encode("utf-8", "surrogatepass")
    kinds = data.translate(_KINDS_TABLE, _CONTINUATION) + b" "
    symbols = kinds.count(b"!")
    if not text.isascii():
        symbols -= sum(data.count(space) for space in _WIDE_SPACES)
    if stop is not None:
        least = symbols + kinds.count(b"a") // 6 + kinds.count(b"1") // 3
        if least > stop:
            return least
    if kinds.count(b" ") > len(kinds) // 2:  # mostly white space: one space between words is as good, and shorter
        kinds = b" ".join(kinds.split()) + b" "
    # A run of L letters is ceil(L / 6) tokens: add 5 letters to the end of every run, then count groups of 6.
    letters = digits = 0
    if b"a" in kinds:
        padded = kinds.replace(b"a ", b"aaaaaa ").replace(b"a!", b"aaaaaa!").replace(b"a1", b"aaaaaa1")
        letters = padded.count(b"aaaaaa")
    if b"1" in kinds:
        digits = kinds.replace(b"1 ", b"111 ").replace(b"1!", b"111!").replace(b"1a", b"111a").count(b"111")
    return symbols + letters + digits


def message_text(content: Any) -> str:
    """The text of a chat message ``content`` (a string, or a list of typed parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                parts.append(str(part.get("text") or part.get("content") or ""))
            else:
                parts.append(str(part))
        return "\n".join(p for p in parts if p)
    return str(content)


def seeded_rng(seed: int, *parts: Any) -> random.Random:
    """A random generator fixed by the seed and the given parts (stable across processes and runs)."""
    digest = hashlib.sha256(json.dumps([seed, *parts], sort_keys=True, default=str).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


_FACTS: list[tuple[bytes, str]] = [
    (p.encode(), a)
    for p, a in [
        ("capital of japan", "Tokyo"),
        ("capital of france", "Paris"),
        ("capital of italy", "Rome"),
        ("capital of germany", "Berlin"),
        ("capital of spain", "Madrid"),
        ("capital of canada", "Ottawa"),
        ("capital of australia", "Canberra"),
        ("capital of kenya", "Nairobi"),
        ("capital of brazil", "Brasília"),
        ("largest planet", "Jupiter"),
        ("boiling point of water", "100 °C at sea level"),
        ("speed of light", "about 299,792 km/s"),
        ("explain ai in one sentence", "AI is software that learns patterns from data to make predictions."),
        ("short joke", "I told my computer a joke about UDP, but I'm not sure it got it."),
        (
            "hamlet",
            "Prince Hamlet feigns madness to avenge his father's murder by his uncle, and nearly everyone dies.",
        ),
    ]
]
_ARITHMETIC = re.compile(r"(?<![\d.])(-?\d{1,15}(?:\.\d{1,15})?)\s*+([-+*/x×])\s*+(-?\d{1,15}(?:\.\d{1,15})?)")
_ASKS_TO_COMPUTE = re.compile(r"what is|compute|calculate|=\s*+\?", re.I)
HINT_CHARS = 10_000
"""The rules that read a prompt for hints (facts, arithmetic, mood, labels) read its first 10,000 characters."""
_WORDS = (  # noqa: SIM905 (a paragraph of words reads better than a 50-item list)
    "the a model answer token request server client thread task queue latency call batch prompt result "
    "fast slow wait time loop pool worker network reply data step order first next each many one two three "
    "simple clear small large quiet steady light river stone cloud field window garden morning signal"
).split()
_WORD_TOKENS = {w: count_tokens(w) for w in _WORDS}
_SHORT_WORDS = [w for w in _WORDS if _WORD_TOKENS[w] == 1]
_POSITIVE = {
    "love",
    "great",
    "excellent",
    "good",
    "happy",
    "wonderful",
    "fantastic",
    "amazing",
    "best",
    "like",
    "enjoyed",
    "perfect",
    "delighted",
    "brilliant",
    "recommend",
    "fast",
    "friendly",
    "helpful",
}
_NEGATIVE = {
    "hate",
    "terrible",
    "awful",
    "bad",
    "worst",
    "broken",
    "angry",
    "slow",
    "poor",
    "disappointed",
    "refund",
    "useless",
    "rude",
    "late",
    "never",
    "crashed",
    "crash",
    "horrible",
    "wrong",
}


def rule_answer(prompt: str) -> str | None:
    """The fixed answer for prompts a lesson can check, or None when filler should be used.

    ``Reply: X`` (or ``Reply with: X``) at the start of a line gives ``X`` (the last such line counts); then the
    table of facts and arithmetic (``What is 17 + 25?``), both within the prompt's first :data:`HINT_CHARS`
    characters. Every rule takes time in proportion to the prompt's length at most, so a long or hostile prompt
    costs milliseconds."""
    data = prompt.encode("utf-8", "surrogatepass")
    low = data.lower()  # ASCII letters only: the same length, so positions in `low` are positions in `data`
    reply = _reply(data, low)
    if reply is not None:
        return reply
    hint = prompt[:HINT_CHARS]
    start = hint.encode("utf-8", "surrogatepass").lower()
    for phrase, answer in _FACTS:
        if phrase in start:
            return answer
    match = _ARITHMETIC.search(hint)
    if match and _ASKS_TO_COMPUTE.search(hint):
        a, op, b = float(match.group(1)), match.group(2), float(match.group(3))
        result = {"+": a + b, "-": a - b, "*": a * b, "x": a * b, "×": a * b}.get(op)
        if op == "/":
            result = a / b if b else None
        if result is not None:
            return str(int(result)) if float(result).is_integer() else f"{result:.4g}"
    return None


def _reply(data: bytes, low: bytes) -> str | None:
    """The text after the last line that starts with ``Reply:`` or ``Reply with:`` (spaces allowed around them)."""
    end = len(low)
    while (at := low.rfind(b"reply", 0, end)) != -1:
        line = low.rfind(b"\n", 0, at) + 1
        end = line  # the rest of this line is not read again: each line is read once
        if low[line:at].strip():
            continue
        i = _skip_spaces(low, at + 5)
        if low.startswith(b"with", i):
            i = _skip_spaces(low, i + 4)
        if not low.startswith(b":", i):
            continue
        i = _skip_spaces(low, i + 1)
        stop = low.find(b"\n", i, i + MAX_REPLY_BYTES)
        value = data[i : i + MAX_REPLY_BYTES if stop == -1 else stop].strip()
        if value:
            return value.decode("utf-8", "surrogatepass")
    return None


MAX_REPLY_BYTES = 65_536  # a Reply: rule's answer is cut to this, before anything else reads it


def _skip_spaces(data: bytes, at: int) -> int:
    """The position of the first byte at or after ``at`` that is not white space (read 4 kB at a time, in C)."""
    while at < len(data):
        window = data[at : at + 4096]
        rest = window.lstrip()
        if rest:
            return at + len(window) - len(rest)
        at += len(window)
    return at


def filler(rng: random.Random, n_tokens: int) -> str:
    """Seeded filler text of exactly ``n_tokens`` tokens: plain words, sentences, a final full stop."""
    if n_tokens <= 0:
        return ""
    words: list[str] = []
    used = 0
    sentence = 0
    while used < n_tokens - 1:
        word = rng.choice(_WORDS)
        if used + _WORD_TOKENS[word] > n_tokens - 1:  # a long word would overshoot: a one-token word ends it
            word = rng.choice(_SHORT_WORDS)
        used += _WORD_TOKENS[word]
        words.append(word.capitalize() if sentence == 0 else word)
        sentence += 1
        if sentence >= rng.randint(6, 12) and used < n_tokens - 2:
            words[-1] += "."
            used += 1
            sentence = 0
    text = " ".join(words) + "."
    return text


def truncate(text: str, n_tokens: int) -> str:
    """The longest prefix of ``text`` whose token count is at most ``n_tokens`` (cut between words).

    Tokens never span a space, so a prefix's count is the sum of its words' counts: reading stops at the word
    that would overshoot, after at most ``n_tokens`` words, however long the text."""
    if count_tokens(text) <= n_tokens:
        return text
    used = 0
    end = 0
    for piece in _PIECES.finditer(text):
        used += count_tokens(piece.group())
        if used > n_tokens:
            break
        end = piece.end()
    return text[:end].rstrip()


_PIECES = re.compile(r"\S+\s*")


def sentiment(text: str) -> str | None:
    """``positive``, ``negative`` or None (neither, or as much of both), from the words of the text's start."""
    words = set(re.findall(r"[a-z]+", text[:HINT_CHARS].lower()))
    pos, neg = len(words & _POSITIVE), len(words & _NEGATIVE)
    if pos > neg:
        return "positive"
    if neg > pos:
        return "negative"
    return None


class NoFiniteValue(ValueError):
    """A schema with no finite value: a ``$ref`` that comes back to itself through required parts only."""


DEEP_REFS = 8  # past this many nested $refs, a value takes the shortest way out (no optional parts, no items)
MAX_REFS = 32


def value_for_schema(schema: dict[str, Any], prompt: str, rng: random.Random, budget: int = 16_384) -> Any:
    """Like :func:`fill_schema`, the value only."""
    return fill_schema(schema, prompt, rng, budget)[0]


def fill_schema(schema: dict[str, Any], prompt: str, rng: random.Random, budget: int = 16_384) -> tuple[Any, bool]:
    """A value that validates against a (checked) JSON schema, chosen from the prompt where it can be.

    ``budget`` bounds the answer: arrays stop growing once about that many tokens are built (a ``minItems`` of a
    million costs no more than a full answer), and the caller cuts the text to its token limit. Recursive
    schemas end: past a few nested ``$ref`` s, only what is required is built. A schema that can only be
    satisfied by an infinitely deep value raises :class:`NoFiniteValue`. The second item is False when the
    budget ran out before the value was whole (the answer then ends with ``finish_reason: "length"``)."""
    builder = _Builder(schema, prompt, rng, budget)
    value = builder.value(schema, "", 0)
    return value, builder.budget > 0


class _Builder:
    def __init__(self, root: dict[str, Any], prompt: str, rng: random.Random, budget: int) -> None:
        self.root, self.rng, self.budget = root, rng, budget
        self.hint = prompt[:HINT_CHARS].lower()
        self.words = set(re.findall(r"\w+", self.hint))
        self.mood = sentiment(self.hint)
        self.answer = rule_answer(prompt)
        self.labels: dict[int, Any] = {}

    def value(self, schema: dict[str, Any], name: str, refs: int) -> Any:
        rng = self.rng
        self.budget -= 1  # every part built costs something: no schema builds more than the budget allows
        if self.budget <= 0:
            return _smallest(schema)
        if "$ref" in schema:
            if refs >= MAX_REFS:
                raise NoFiniteValue(f"$ref {schema['$ref']!r} refers back to itself through required parts only")
            ref = schema["$ref"]
            if ref == "#":
                return self.value(self.root, name, refs + 1)
            defs = self.root.get("$defs") or self.root.get("definitions") or {}
            return self.value(defs.get(ref.split("/")[-1], {}), name, refs + 1)
        for key in ("anyOf", "oneOf", "allOf"):
            if schema.get(key):
                options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
                if refs >= DEEP_REFS:  # deep in a recursion: null, or an option that does not recurse
                    plain = [o for o in schema[key] if o.get("type") == "null" or "$ref" not in o]
                    options = plain or options
                    if any(o.get("type") == "null" for o in options):
                        return None
                return self.value(options[0], name, refs)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            enum = id(schema["enum"])  # the same enum, used by many properties, is chosen from once
            if enum not in self.labels:
                self.labels[enum] = self.label(list(schema["enum"]))
            return self.labels[enum]
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object" or "properties" in schema:
            props = schema.get("properties", {})
            if refs >= DEEP_REFS:
                required = set(schema.get("required", []))
                props = {k: v for k, v in props.items() if k in required}
            out = {}
            for key, sub in props.items():
                self.budget -= count_tokens(key) + 2
                out[key] = self.value(sub, key, refs)
            return out
        if kind == "array":
            least = int(schema.get("minItems", 0))
            n = least if refs >= DEEP_REFS else max(least, 1)
            items: list[Any] = []
            while len(items) < n and (self.budget > 0 or not items):
                items.append(self.value(schema.get("items", {}), name, refs))
                self.budget -= 1
            return items
        self.budget -= 2
        if kind == "integer":
            low = math.ceil(schema.get("minimum", 0))
            return rng.randint(low, max(low, math.floor(schema.get("maximum", max(low, 100)))))
        if kind == "number":
            bottom = float(schema.get("minimum", 0.0))
            top = max(bottom, float(schema.get("maximum", max(bottom, 1.0))))
            drawn = round(rng.uniform(bottom, top), 3)
            return drawn if math.isfinite(drawn) and bottom <= drawn <= top else bottom
        if kind == "boolean":
            return self.mood == "positive" if self.mood else rng.random() < 0.5
        if kind == "null":
            return None
        answer = self.answer
        if answer is not None and name.lower() in {"", "answer", "text", "output", "response", "reply", "result"}:
            return answer
        n_tokens = rng.randint(3, 8)
        self.budget -= n_tokens
        text = filler(rng, n_tokens)
        if "maxLength" in schema:
            text = text[: int(schema["maxLength"])]
        return text

    def label(self, options: list[Any]) -> Any:
        """The option the prompt's mood or words point to, else a seeded choice."""
        mood = self.mood
        lowered = [str(o).lower() for o in options]
        if mood in lowered:
            return options[lowered.index(mood)]
        if mood is None and "neutral" in lowered:
            return options[lowered.index("neutral")]
        for option, low in zip(options, lowered, strict=True):
            if low in self.words or (low and _has_word(self.hint, low)):
                return option
        return self.rng.choice(options)


def _word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


def _has_word(text: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``text`` as a whole word (as ``\\b...\\b`` would find it), without a regex."""
    start = text.find(phrase)
    for _ in range(100):  # a phrase that occurs everywhere is looked at a bounded number of times
        if start == -1:
            return False
        end = start + len(phrase)
        before = start == 0 or not (_word_char(phrase[0]) and _word_char(text[start - 1]))
        after = end == len(text) or not (_word_char(phrase[-1]) and _word_char(text[end]))
        if before and after:
            return True
        start = text.find(phrase, start + 1)
    return False


def _smallest(schema: dict[str, Any]) -> Any:
    """The smallest value of a schema's kind, built without looking further in: what is left once the budget is
    spent (the answer is then cut at its token limit anyway)."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    smallest: dict[str, Any] = {"object": {}, "array": [], "string": "", "integer": 0, "number": 0, "boolean": False}
    return smallest.get(kind or ("object" if "properties" in schema else ""))
