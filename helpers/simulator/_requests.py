"""What a request asks for, checked the way a provider checks it: every malformed body is a 4xx that names the field.

The simulator reads a request in three steps, each bounded so that no body, however hostile, costs more than a
few milliseconds of the server's single event-loop thread (and so delays no other client):

1. :func:`load_json` parses at most :data:`MAX_BODY_BYTES` (the caller refuses longer bodies with 413 before
   reading them), refuses JSON nested deeper than :data:`MAX_DEPTH`, ``NaN``/``Infinity``, and strings that are
   not valid Unicode (a lone surrogate such as ``"\\ud800"``);
2. :func:`parse_chat` / :func:`parse_responses` check each field the simulator acts on (types, names, ranges) and
   build an :class:`Ask`; a JSON schema (``response_format``, ``tools[].function.parameters``) is checked whole
   by :func:`check_schema`;
3. the prompt is measured against the model's context length (:data:`CONTEXT_TOKENS`) and ``max_tokens``
   against its output limit (:data:`MAX_OUTPUT_TOKENS`), with OpenAI's own messages.

Errors are :class:`BadRequest`, turned into OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from . import _text

__all__ = [
    "CONTEXT_TOKENS",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_OUTPUT_TOKENS",
    "Ask",
    "BadRequest",
    "check_schema",
    "load_json",
    "parse_chat",
    "parse_responses",
]

MAX_BODY_BYTES = 4 * 1024 * 1024
"""The largest request body accepted (4 MiB); a longer one is answered 413 without being read."""
MAX_DEPTH = 64
"""How deeply JSON may nest (objects and arrays); a chat request needs about 12 levels, a schema a few more."""
CONTEXT_TOKENS = 128_000
"""The simulated model's context length: prompt plus ``max_tokens`` (as gpt-4o's)."""
MAX_OUTPUT_TOKENS = 16_384
"""The most tokens one answer can have (as gpt-4o's); a larger ``max_tokens`` is a 400."""
MAX_MESSAGES = 2_048
MAX_TOOLS = 128
MAX_SCHEMA_NODES = 5_000
MAX_ENUM = 1_000
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


class BadRequest(Exception):
    """A request the simulator refuses, with the HTTP status, OpenAI's error fields and the message."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


# --- step 1: the JSON itself ------------------------------------------------------------------------------

NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


def _no_constant(name: str) -> Any:
    raise BadRequest(f"{NOT_JSON} It contains {name}, which JSON does not allow.")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"{NOT_JSON} It holds the number {text[:40]}, too large for a 64-bit float.")
    return value


def load_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or :class:`BadRequest` saying what is wrong with it.

    Parsing is the json module's (in C); past it, only what the simulator reads is walked. Strings are checked
    for lone surrogates only when the raw bytes hold something that could be one (an escape ``\\ud...`` or
    its UTF-8 form), so an ordinary body costs one parse."""
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BadRequest(f"The request body nests deeper than {MAX_DEPTH} levels of objects and arrays.") from None
    except ValueError:  # includes bytes that are not UTF-8, and integers too long to read
        raise BadRequest(NOT_JSON) from None
    if not isinstance(body, dict):
        raise BadRequest(f"{NOT_JSON} The body must be a JSON object, not {_kind(body)}.")
    escape = raw.find(b"\\u") != -1 and (b"\\ud" in raw or b"\\uD" in raw)
    if escape or b"\xed" in raw:  # maybe a surrogate: an escape \ud800-\udfff, or its UTF-8 form
        check_tree(body, body)
    return body


def check_tree(node: Any, body: dict[str, Any]) -> None:
    """Depth and Unicode of every value under ``node``, without recursion (no body can overflow the stack)."""
    stack: list[tuple[Any, int]] = [(node, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"The request body nests deeper than {MAX_DEPTH} levels of objects and arrays.")
        if isinstance(node, dict):
            for key in node:
                _check_string(key, body)
            values: Any = node.values()
        else:
            values = node
        for value in values:
            if isinstance(value, dict | list):
                stack.append((value, depth + 1))
            elif isinstance(value, str):
                _check_string(value, body)


def _check_string(text: str, body: dict[str, Any]) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = _path_of(body, text)
        code = ord(text[exc.start])
        raise BadRequest(
            f"Invalid Unicode in {where or 'the request body'}: a lone surrogate \\u{code:04x} (at character "
            f"{exc.start}) is not a character. Send text as valid UTF-8.",
            where,
        ) from None


def _path_of(body: Any, target: str) -> str | None:
    """Where a string sits in the body, as OpenAI names parameters (``messages[0].content``); only on error."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        node, path = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, int):
                here = f"{path}[{key}]"
            else:
                name = key.encode("utf-8", "backslashreplace").decode()
                here = f"{path}.{name}" if path else name
            if value is target or key is target:
                return here
            if isinstance(value, dict | list):
                stack.append((value, here))
    return None


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# --- step 2: the fields -----------------------------------------------------------------------------------


class Ask:
    """The parts of a chat or responses request the simulator acts on."""

    def __init__(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]],
        max_tokens: int | None,
        tools: list[dict[str, Any]],
        tool_choice: Any,
        schema: dict[str, Any] | None,
    ) -> None:
        self.model, self.messages, self.max_tokens = model, messages, max_tokens
        self.tools, self.tool_choice, self.schema = tools, tool_choice, schema
        last_user = [m for m in messages if m.get("role") == "user"]
        self.prompt = _text.message_text(last_user[-1].get("content")) if last_user else ""
        self.after_tool = bool(messages) and messages[-1].get("role") == "tool"
        canonical = json.dumps([model, messages, max_tokens], sort_keys=True, default=str)
        self.key = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        self.prompt_tokens = _prompt_tokens(messages, max_tokens)

    def tool_to_call(self) -> dict[str, Any] | None:
        """The function tool this answer calls, or None for a text answer."""
        if not self.tools or self.after_tool or self.tool_choice == "none":
            return None
        named = None
        if isinstance(self.tool_choice, dict):
            named = (self.tool_choice.get("function") or {}).get("name") or self.tool_choice.get("name")
        by_name = {t["name"]: t for t in self.tools}
        if named in by_name:
            return by_name[named]
        outputs = [t for t in self.tools if t["name"].startswith("final_result")]
        return outputs[0] if outputs else self.tools[0]


def _prompt_tokens(messages: list[dict[str, Any]], max_tokens: int | None) -> int:
    """Tokens of the messages (OpenAI's count: content plus 4 per message plus 3), refused past the context."""
    room = CONTEXT_TOKENS - (max_tokens or 0)
    total = 3
    for message in messages:
        total += 4 + _text.count_tokens(_text.message_text(message.get("content")), stop=room - total)
        for call in message.get("tool_calls") or []:
            total += _text.count_tokens(json.dumps(call.get("function", {})), stop=room - total)
        if total > room:
            break
    if total > room:
        asked = f"at least {total}" if max_tokens is None else f"at least {total + max_tokens}"
        detail = "" if max_tokens is None else f" ({total}+ in the messages, {max_tokens} in the completion)"
        raise BadRequest(
            f"This model's maximum context length is {CONTEXT_TOKENS} tokens. However, you requested {asked} "
            f"tokens{detail}. Please reduce the length of the messages or completion.",
            "messages",
            code="context_length_exceeded",
        )
    return total


def _string(value: Any, param: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        what = "a string" if empty else "a non-empty string"
        raise BadRequest(f"Invalid type for '{param}': expected {what}, but got {_kind(value)} instead.", param)
    return value


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"Invalid type for '{param}': expected an object, but got {_kind(value)} instead.", param)
    return value


def _array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"Invalid type for '{param}': expected an array, but got {_kind(value)} instead.", param)
    return value


def _model(body: dict[str, Any]) -> str:
    if body.get("model") is None:
        raise BadRequest("you must provide a model parameter", "model")
    return _string(body["model"], "model")


def _max_tokens(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            shown = repr(value) if isinstance(value, int | float | bool) else _kind(value)
            raise BadRequest(f"Invalid '{name}': expected a positive integer, got {shown}.", name)
        if value > MAX_OUTPUT_TOKENS:
            raise BadRequest(
                f"{name} is too large: {value}. This model supports at most {MAX_OUTPUT_TOKENS} completion tokens, "
                f"whereas you provided {value}.",
                name,
            )
        return value
    return None


def _content(value: Any, param: str) -> Any:
    """A message's content: a string, null, or a list of typed parts whose text is a string."""
    if value is None or isinstance(value, str):
        return value
    for i, part in enumerate(_array(value, param)):
        if isinstance(part, str):
            continue
        part = _object(part, f"{param}[{i}]")
        _string(part.get("type"), f"{param}[{i}].type")
        for key in ("text", "content"):
            if key in part and part[key] is not None and not isinstance(part[key], str):
                _string(part[key], f"{param}[{i}].{key}", empty=True)
    return value


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty array of message objects.", "messages")
    _at_most(value, MAX_MESSAGES, "messages")
    check_tree(value, {"messages": value})  # the messages are hashed whole: their depth is bounded
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        message = _object(message, where)
        role = message.get("role")
        if role not in ROLES:
            shown = f"'{role}'" if isinstance(role, str) else _kind(role)
            raise BadRequest(
                f"Invalid value for '{where}.role': {shown}. Supported values are: {', '.join(ROLES)}.",
                f"{where}.role",
            )
        _content(message.get("content"), f"{where}.content")
        calls = message.get("tool_calls")
        if calls is not None:
            for j, call in enumerate(_array(calls, f"{where}.tool_calls")):
                call = _object(call, f"{where}.tool_calls[{j}]")
                function = _object(call.get("function"), f"{where}.tool_calls[{j}].function")
                _string(function.get("name"), f"{where}.tool_calls[{j}].function.name")
                _string(function.get("arguments"), f"{where}.tool_calls[{j}].function.arguments", empty=True)
    return value


def _at_most(value: list[Any], most: int, param: str) -> None:
    if len(value) > most:
        raise BadRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length {most}, but got an array "
            f"with length {len(value)} instead.",
            param,
            code="array_above_max_length",
        )


def _chat_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    listed = _array(body.get("tools") or [], "tools")
    _at_most(listed, MAX_TOOLS, "tools")
    for i, tool in enumerate(listed):
        tool = _object(tool, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            continue  # other tool kinds (web search, ...) are not simulated: ignored, as before
        function = _object(tool.get("function"), f"tools[{i}].function")
        name = _string(function.get("name"), f"tools[{i}].function.name")
        parameters = function.get("parameters")
        if parameters is not None:
            check_schema(_object(parameters, f"tools[{i}].function.parameters"), f"tools[{i}].function.parameters")
        tools.append({**function, "name": name, "parameters": parameters or {}})
    return tools


def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """The choice the answer follows, and the tools it may call (``allowed_tools`` narrows them)."""
    if choice is None or isinstance(choice, str):
        if choice not in (None, "none", "auto", "required"):
            raise BadRequest(
                f"Invalid value for 'tool_choice': '{choice}'. Supported values are: 'none', 'auto', 'required', "
                "or an object naming a function.",
                "tool_choice",
            )
        return choice, tools
    choice = _object(choice, "tool_choice")
    if choice.get("type") == "allowed_tools":
        allowed = _object(choice.get("allowed_tools"), "tool_choice.allowed_tools")
        names = set()
        for i, tool in enumerate(_array(allowed.get("tools") or [], "tool_choice.allowed_tools.tools")):
            tool = _object(tool, f"tool_choice.allowed_tools.tools[{i}]")
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else tool.get("name")
            names.add(_string(name, f"tool_choice.allowed_tools.tools[{i}].function.name"))
        mode = allowed.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise BadRequest(
                f"Invalid value for 'tool_choice.allowed_tools.mode': {mode!r}. Supported values are: 'auto' and "
                "'required'.",
                "tool_choice.allowed_tools.mode",
            )
        return mode, [t for t in tools if t["name"] in names] or tools
    function = choice.get("function")
    if function is not None:
        _string(_object(function, "tool_choice.function").get("name"), "tool_choice.function.name")
    elif choice.get("name") is not None:
        _string(choice["name"], "tool_choice.name")
    return choice, tools


def _schema_format(fmt: Any, param: str, schema_at: str) -> dict[str, Any] | None:
    """The schema of a ``json_schema`` format (None for text or JSON mode), checked."""
    if fmt is None:
        return None
    fmt = _object(fmt, param)
    kind = fmt.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        shown = f"'{kind}'" if isinstance(kind, str) else _kind(kind)
        raise BadRequest(
            f"Invalid value for '{param}.type': {shown}. Supported values are: 'text', 'json_object' and "
            "'json_schema'.",
            f"{param}.type",
        )
    if kind != "json_schema":
        return None
    holder = _object(fmt.get(schema_at), f"{param}.{schema_at}") if schema_at else fmt
    where = f"{param}.{schema_at}.schema" if schema_at else f"{param}.schema"
    schema = _object(holder.get("schema") or {}, where)
    check_schema(schema, where)
    return schema


def parse_chat(body: dict[str, Any]) -> Ask:
    """The :class:`Ask` of a ``/v1/chat/completions`` body, or :class:`BadRequest`."""
    model = _model(body)
    messages = _messages(body.get("messages"))
    limit = _max_tokens(body, "max_completion_tokens", "max_tokens")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest(f"Invalid type for 'stream': expected a boolean, but got {_kind(body['stream'])}.", "stream")
    options = body.get("stream_options")
    if options is not None:
        include = _object(options, "stream_options").get("include_usage", False)
        if not isinstance(include, bool):
            raise BadRequest(
                f"Invalid type for 'stream_options.include_usage': expected a boolean, but got {_kind(include)}.",
                "stream_options.include_usage",
            )
    tools = _chat_tools(body)
    schema = _schema_format(body.get("response_format"), "response_format", "json_schema")
    choice, tools = _tool_choice(body.get("tool_choice"), tools)
    return Ask(model=model, messages=messages, max_tokens=limit, tools=tools, tool_choice=choice, schema=schema)


def parse_responses(body: dict[str, Any]) -> Ask:
    """The :class:`Ask` of a ``/v1/responses`` body, or :class:`BadRequest`."""
    model = _model(body)
    items = body.get("input")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        messages.append({"role": "system", "content": _string(instructions, "instructions", empty=True)})
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif items is not None:
        _at_most(_array(items, "input"), MAX_MESSAGES, "input")
        check_tree(items, {"input": items})
        for i, item in enumerate(items):
            item = _object(item, f"input[{i}]")
            kind = item.get("type")
            if kind == "function_call_output":
                output = item.get("output", "")
                text = output if isinstance(output, str) else json.dumps(output)
                messages.append({"role": "tool", "content": text})
            elif kind == "function_call":
                name = _string(item.get("name"), f"input[{i}].name")
                arguments = _string(item.get("arguments", ""), f"input[{i}].arguments", empty=True)
                call = {"function": {"name": name, "arguments": arguments}}
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            elif "role" in item:
                if item["role"] not in ROLES:
                    raise BadRequest(f"Invalid value for 'input[{i}].role'.", f"input[{i}].role")
                content = _content(item.get("content"), f"input[{i}].content")
                messages.append({"role": item["role"], "content": _text.message_text(content)})
    if not any(m["role"] in ("user", "tool") for m in messages):
        raise BadRequest("'input' must be a string or a list holding at least one user message.", "input")
    limit = _max_tokens(body, "max_output_tokens")
    tools = []
    listed = _array(body.get("tools") or [], "tools")
    _at_most(listed, MAX_TOOLS, "tools")
    for i, tool in enumerate(listed):
        tool = _object(tool, f"tools[{i}]")
        if tool.get("type") != "function":
            continue
        parameters = _object(tool.get("parameters") or {}, f"tools[{i}].parameters")
        check_schema(parameters, f"tools[{i}].parameters")
        tools.append({"name": _string(tool.get("name"), f"tools[{i}].name"), "parameters": parameters})
    options = body.get("text")
    schema = None
    if options is not None:
        schema = _schema_format(_object(options, "text").get("format"), "text.format", "")
    choice, tools = _tool_choice(body.get("tool_choice"), tools)
    return Ask(model=model, messages=messages, max_tokens=limit, tools=tools, tool_choice=choice, schema=schema)


# --- JSON schemas -------------------------------------------------------------------------------------------


def check_schema(schema: dict[str, Any], param: str) -> None:
    """A schema the simulator can fill: known types, sound numbers, resolvable ``$ref``s, bounded size.

    Walks the schema without recursion; every problem names where it is (``... at properties.items``)."""
    defs = {}
    for name in ("$defs", "definitions"):
        if name in schema:
            defs.update({f"#/{name}/{k}": v for k, v in _object(schema[name], f"{param}.{name}").items()})
    stack: list[tuple[Any, str, int]] = [(schema, "", 1)]
    nodes = enum_values = 0
    while stack:
        node, at, depth = stack.pop()
        nodes += 1
        where = f"{param}{'.' if at else ''}{at}"

        def bad(problem: str, where: str = where) -> BadRequest:
            return BadRequest(f"Invalid schema for '{param}': {problem} (at {where}).", param)

        if nodes > MAX_SCHEMA_NODES or depth > MAX_DEPTH:
            raise bad(f"it is too large (more than {MAX_SCHEMA_NODES} parts or {MAX_DEPTH} levels)")
        if not isinstance(node, dict):
            raise bad(f"a schema must be an object, not {_kind(node)}")
        if "$ref" in node:
            ref = node["$ref"]
            if ref != "#" and ref not in defs:
                raise bad(
                    f"$ref {ref!r} does not point to a definition in $defs"
                    if isinstance(ref, str)
                    else "$ref must be a string such as '#/$defs/Item'"
                )
        kind = node.get("type")
        kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
        for k in kinds:
            if k not in TYPES:
                raise bad(f"unknown type {k!r}; JSON schema types are {', '.join(TYPES)}")
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in node and (isinstance(node[key], bool) or not isinstance(node[key], int | float)):
                raise bad(f"{key} must be a number, not {_kind(node[key])}")
        for key in ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"):
            if key in node and (isinstance(node[key], bool) or not isinstance(node[key], int) or node[key] < 0):
                raise bad(f"{key} must be a whole number of at least 0")
        for low, high in (("minimum", "maximum"), ("minItems", "maxItems"), ("minLength", "maxLength")):
            if low in node and high in node and node[low] > node[high]:
                raise bad(f"{low} ({node[low]}) is larger than {high} ({node[high]})")
        if "enum" in node:
            if not isinstance(node["enum"], list) or not node["enum"]:
                raise bad("enum must be a non-empty array of values")
            enum_values += len(node["enum"])
            if enum_values > MAX_ENUM:
                raise bad(f"its enums have more than {MAX_ENUM} values in all (OpenAI's limit)")
        for key in ("anyOf", "oneOf", "allOf"):
            if key in node:
                options = node[key]
                if not isinstance(options, list) or not options:
                    raise bad(f"{key} must be a non-empty array of schemas")
                stack.extend((o, f"{at}.{key}[{i}]".lstrip("."), depth + 1) for i, o in enumerate(options))
        if "properties" in node:
            if not isinstance(node["properties"], dict):
                raise bad("properties must be an object of schemas")
            stack.extend((s, f"{at}.properties.{k}".lstrip("."), depth + 1) for k, s in node["properties"].items())
        if "required" in node and (
            not isinstance(node["required"], list) or not all(isinstance(r, str) for r in node["required"])
        ):
            raise bad("required must be an array of property names")
        if "items" in node:
            stack.append((node["items"], f"{at}.items".lstrip("."), depth + 1))
        if at == "":
            stack.extend((s, f"$defs.{k.rsplit('/', 1)[1]}", depth + 1) for k, s in defs.items())
