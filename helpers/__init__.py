"""Helpers behind the workbook: the local LLM simulator, where calls go, runs of many calls and their pictures.

The names a lesson uses are importable from here (``from helpers import connect, run_threads, draw``); they load
on first use, so that ``python -m helpers.simulator`` starts quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .calls import APIError, MalformedResponse, ask, ask_agent, ask_async
    from .runs import (
        STRATEGIES,
        Answer,
        CallRecord,
        RunReport,
        run,
        run_agent_async,
        run_agent_threads,
        run_async,
        run_in_new_loop,
        run_naive_async,
        run_naive_threads,
        run_sequential,
        run_threads,
    )
    from .settings import Secret, SetupError, Target, connect
    from .timeline import draw, draw_server, summary_table

_MODULES = {
    "settings": ["connect", "Target", "Secret", "SetupError"],
    "calls": ["ask", "ask_async", "ask_agent", "APIError", "MalformedResponse"],
    "runs": [
        "STRATEGIES",
        "Answer",
        "CallRecord",
        "RunReport",
        "run",
        "run_sequential",
        "run_threads",
        "run_async",
        "run_in_new_loop",
        "run_naive_threads",
        "run_naive_async",
        "run_agent_threads",
        "run_agent_async",
    ],
    "timeline": ["draw", "draw_server", "summary_table"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "STRATEGIES",
    "APIError",
    "Answer",
    "CallRecord",
    "MalformedResponse",
    "RunReport",
    "Secret",
    "SetupError",
    "Target",
    "ask",
    "ask_agent",
    "ask_async",
    "connect",
    "draw",
    "draw_server",
    "run",
    "run_agent_async",
    "run_agent_threads",
    "run_async",
    "run_in_new_loop",
    "run_naive_async",
    "run_naive_threads",
    "run_sequential",
    "run_threads",
    "summary_table",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'helpers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
