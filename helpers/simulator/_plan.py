"""What the simulator will answer to one request, decided before it answers: the text or tool call, its tokens,
its latency and whether it fails. All of it is seeded (seed and request body), so the same seed and prompt get
the same answer and latency however the calls interleave (lesson 00)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import _text
from ._config import SimulatorConfig
from ._requests import MAX_OUTPUT_TOKENS, Ask, BadRequest

if TYPE_CHECKING:
    from ._sandbox import Sandbox


def plan(cfg: SimulatorConfig, ask: Ask) -> dict[str, Any]:
    """Decide the answer (text or tool call), its token count and its timing.

    An answer is never longer than ``max_tokens`` (or the model's output limit): what would be longer is cut there,
    with ``finish_reason: "length"``, as a provider does; nothing longer than that limit is ever built."""
    rng = _text.seeded_rng(cfg.seed, "answer", ask.key)
    tool = ask.tool_to_call()
    limit = ask.max_tokens or MAX_OUTPUT_TOKENS
    finish = "stop"
    try:
        if tool is not None:
            value, whole = _text.fill_schema(tool.get("parameters") or {}, ask.prompt, rng, limit)
            content, finish = json.dumps(value), "tool_calls" if whole else "length"
        elif ask.schema is not None:
            value, whole = _text.fill_schema(ask.schema, ask.prompt, rng, limit)
            content, finish = json.dumps(value), "stop" if whole else "length"
    except _text.NoFiniteValue as exc:
        where = "tools" if tool is not None else "response_format"
        raise BadRequest(f"Invalid schema for '{where}': it has no finite value ({exc}).", where) from None
    if tool is None and ask.schema is None:
        if ask.after_tool:
            result = _text.message_text(ask.messages[-1].get("content"))
            content = f"The tool returned: {result}"
        else:
            content = _text.rule_answer(ask.prompt) or _text.filler(rng, rng.randint(30, 80))
        too_long = ask.max_tokens is not None and ask.max_tokens < _text.count_tokens(content)
        if too_long and _text.rule_answer(ask.prompt) is None and not ask.after_tool:
            content = _text.filler(rng, limit)  # filler of exactly the length allowed
            finish = "length"
    if _text.count_tokens(content) > limit:
        content = _text.truncate(content, limit)
        finish = "length"
    out_tokens = max(1, _text.count_tokens(content))
    generation = out_tokens / cfg.tokens_per_second
    base = cfg.latency if cfg.latency is not None else cfg.ttft + generation
    lat_rng = _text.seeded_rng(cfg.seed, "latency", ask.key)
    if cfg.profile == "fixed":
        factor = 1.0
    elif cfg.profile == "uniform":
        factor = lat_rng.uniform(1 - cfg.spread, 1 + cfg.spread)
    else:  # longtail: most calls near the base, about one in seven much slower
        factor = lat_rng.uniform(2.0, 5.0) if lat_rng.random() < 0.15 else lat_rng.uniform(0.7, 1.3)
    total = base * factor
    first = total * (cfg.ttft / (cfg.ttft + generation)) if cfg.ttft + generation > 0 else 0.0
    return {
        "tool": tool,
        "content": content,
        "finish": finish,
        "out_tokens": out_tokens,
        "total": total,
        "first": first,
    }


def fault(sandbox: Sandbox, record: dict[str, Any], ask: Ask) -> str | None:
    """The fault this request gets, if any: by its number in the sandbox (``script``), by its prompt
    (``fault_on``) or by a seeded draw (``fail_rate``)."""
    cfg = sandbox.config
    if record["n"] in cfg.script:
        return cfg.script[record["n"]]
    for text, kind in cfg.fault_on.items():
        if text in ask.prompt:
            return kind
    if cfg.fail_rate > 0:
        occurrence = sandbox.seen_bodies[ask.key]
        rng = _text.seeded_rng(cfg.seed, "fault", ask.key, occurrence)
        if rng.random() < cfg.fail_rate:
            return rng.choice(cfg.fail_kinds)
    return None
