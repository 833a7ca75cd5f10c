"""What the simulator says: deterministic answers, token counts and JSON that fits a schema.

No model, no download: answers come from rules a lesson can check (``Reply: X`` gives ``X``), a small
table of facts, simple arithmetic, and otherwise seeded filler text of the requested length.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

_TOKEN = re.compile(r"[A-Za-z]+|\d{1,3}|[^\sA-Za-z\d]")


def count_tokens(text: str) -> int:
    """Approximate an LLM tokenizer: words (long ones in pieces of 6 letters), 3-digit groups, symbols."""
    total = 0
    for piece in _TOKEN.findall(text):
        total += (len(piece) + 5) // 6 if piece.isalpha() else 1
    return total


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


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Tokens of a chat request, counted the way OpenAI documents it: content plus 4 per message plus 3."""
    total = 3
    for message in messages:
        total += 4 + count_tokens(message_text(message.get("content")))
        for call in message.get("tool_calls") or []:
            total += count_tokens(json.dumps(call.get("function", {})))
    return total


def seeded_rng(seed: int, *parts: Any) -> random.Random:
    """A random generator fixed by the seed and the given parts (stable across processes and runs)."""
    digest = hashlib.sha256(json.dumps([seed, *parts], sort_keys=True, default=str).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


_FACTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p, re.I), a)
    for p, a in [
        (r"capital of japan", "Tokyo"),
        (r"capital of france", "Paris"),
        (r"capital of italy", "Rome"),
        (r"capital of germany", "Berlin"),
        (r"capital of spain", "Madrid"),
        (r"capital of canada", "Ottawa"),
        (r"capital of australia", "Canberra"),
        (r"capital of kenya", "Nairobi"),
        (r"capital of brazil", "Brasília"),
        (r"largest planet", "Jupiter"),
        (r"boiling point of water", "100 °C at sea level"),
        (r"speed of light", "about 299,792 km/s"),
        (r"explain ai in one sentence", "AI is software that learns patterns from data to make predictions."),
        (r"short joke", "I told my computer a joke about UDP, but I'm not sure it got it."),
        (
            r"hamlet",
            "Prince Hamlet feigns madness to avenge his father's murder by his uncle, and nearly everyone dies.",
        ),
    ]
]
_REPLY = re.compile(r"^\s*reply\s*(?:with)?\s*:\s*(.+?)\s*$", re.I | re.M)
_ARITHMETIC = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/x×])\s*(-?\d+(?:\.\d+)?)")
_WORDS = (  # noqa: SIM905 (a paragraph of words reads better than a 50-item list)
    "the a model answer token request server client thread task queue latency call batch prompt result "
    "fast slow wait time loop pool worker network reply data step order first next each many one two three "
    "simple clear small large quiet steady light river stone cloud field window garden morning signal"
).split()
_SHORT_WORDS = [w for w in _WORDS if count_tokens(w) == 1]
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
    """The fixed answer for prompts a lesson can check, or None when filler should be used."""
    reply = _REPLY.findall(prompt)
    if reply:
        return reply[-1]
    for pattern, answer in _FACTS:
        if pattern.search(prompt):
            return answer
    match = _ARITHMETIC.search(prompt)
    if match and re.search(r"what is|compute|calculate|=\s*\?", prompt, re.I):
        a, op, b = float(match.group(1)), match.group(2), float(match.group(3))
        result = {"+": a + b, "-": a - b, "*": a * b, "x": a * b, "×": a * b}.get(op)
        if op == "/":
            result = a / b if b else None
        if result is not None:
            return str(int(result)) if float(result).is_integer() else f"{result:.4g}"
    return None


def filler(rng: random.Random, n_tokens: int) -> str:
    """Seeded filler text of exactly ``n_tokens`` tokens: plain words, sentences, a final full stop."""
    if n_tokens <= 0:
        return ""
    words: list[str] = []
    used = 0
    sentence = 0
    while used < n_tokens - 1:
        word = rng.choice(_WORDS)
        if used + count_tokens(word) > n_tokens - 1:  # a long word would overshoot: a one-token word ends it
            word = rng.choice(_SHORT_WORDS)
        if sentence == 0:
            word = word.capitalize()
        words.append(word)
        used += count_tokens(word)
        sentence += 1
        if sentence >= rng.randint(6, 12) and used < n_tokens - 2:
            words[-1] += "."
            used += 1
            sentence = 0
    text = " ".join(words) + "."
    return text


def truncate(text: str, n_tokens: int) -> str:
    """The longest prefix of ``text`` whose token count is at most ``n_tokens``."""
    if count_tokens(text) <= n_tokens:
        return text
    pieces = re.findall(r"\S+\s*", text)
    out = ""
    for piece in pieces:
        if count_tokens(out + piece) > n_tokens:
            break
        out += piece
    return out.rstrip()


def sentiment(text: str) -> str | None:
    words = set(re.findall(r"[a-z]+", text.lower()))
    pos, neg = len(words & _POSITIVE), len(words & _NEGATIVE)
    if pos > neg:
        return "positive"
    if neg > pos:
        return "negative"
    return None


def value_for_schema(
    schema: dict[str, Any], prompt: str, rng: random.Random, root: dict[str, Any] | None = None, name: str = ""
) -> Any:
    """A value that validates against a JSON schema, chosen from the prompt where it can be."""
    root = root or schema
    if "$ref" in schema:
        ref = schema["$ref"].split("/")[-1]
        defs = root.get("$defs") or root.get("definitions") or {}
        return value_for_schema(defs.get(ref, {}), prompt, rng, root, name)
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return value_for_schema(options[0], prompt, rng, root, name)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return _choose_label(list(schema["enum"]), prompt, rng)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {key: value_for_schema(sub, prompt, rng, root, key) for key, sub in props.items()}
    if kind == "array":
        n = max(int(schema.get("minItems", 1)), 1)
        return [value_for_schema(schema.get("items", {}), prompt, rng, root, name) for _ in range(n)]
    if kind == "integer":
        low, high = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return rng.randint(low, max(low, high))
    if kind == "number":
        bottom, top = float(schema.get("minimum", 0.0)), float(schema.get("maximum", 1.0))
        return round(rng.uniform(bottom, max(bottom, top)), 3)
    if kind == "boolean":
        mood = sentiment(prompt)
        return mood == "positive" if mood else rng.random() < 0.5
    if kind == "null":
        return None
    answer = rule_answer(prompt)
    if answer is not None and name.lower() in {"", "answer", "text", "output", "response", "reply", "result"}:
        return answer
    text = filler(rng, rng.randint(3, 8))
    if "maxLength" in schema:
        text = text[: int(schema["maxLength"])]
    return text


def _choose_label(options: list[Any], prompt: str, rng: random.Random) -> Any:
    mood = sentiment(prompt)
    lowered = [str(o).lower() for o in options]
    if mood in lowered:
        return options[lowered.index(mood)]
    if mood is None and "neutral" in lowered:
        return options[lowered.index("neutral")]
    for option, low in zip(options, lowered, strict=True):
        if low and re.search(rf"\b{re.escape(low)}\b", prompt.lower()):
            return option
    return rng.choice(options)
