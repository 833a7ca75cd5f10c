"""Helpers behind the workbook: the local LLM simulator, where calls go, runs of many calls and their pictures.

The names a lesson uses are importable from here (``from helpers import connect, run_threads, draw``); they load
on first use, so that ``python -m helpers.simulator`` starts quickly.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batch import BatchReport, run_batch
    from .calls import APIError, MalformedResponse, ask, ask_agent, ask_async
    from .quota import QuotaExceeded, QuotaGuard
    from .retry import is_retryable, retry, retry_async, with_retries
    from .runs import (
        STRATEGIES,
        AgentThreadPool,
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
    from .throttle import Throttle
    from .timeline import draw, draw_server, summary_table

_MODULES = {
    "batch": ["BatchReport", "run_batch"],
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
        "AgentThreadPool",
    ],
    "timeline": ["draw", "draw_server", "summary_table"],
    "retry": ["retry", "retry_async", "with_retries", "is_retryable"],
    "throttle": ["Throttle"],
    "quota": ["QuotaGuard", "QuotaExceeded"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "STRATEGIES",
    "APIError",
    "AgentThreadPool",
    "Answer",
    "BatchReport",
    "CallRecord",
    "MalformedResponse",
    "QuotaExceeded",
    "QuotaGuard",
    "RunReport",
    "Secret",
    "SetupError",
    "Target",
    "Throttle",
    "ask",
    "ask_agent",
    "ask_async",
    "connect",
    "draw",
    "draw_server",
    "is_retryable",
    "retry",
    "retry_async",
    "run",
    "run_agent_async",
    "run_agent_threads",
    "run_async",
    "run_batch",
    "run_in_new_loop",
    "run_naive_async",
    "run_naive_threads",
    "run_sequential",
    "run_threads",
    "summary_table",
    "with_retries",
]


class _Package(types.ModuleType):
    """``helpers.retry`` is a function and also the name of the module that defines it. Importing that module
    (``from helpers.retry import backoff``, or another helper doing so) makes Python set the package attribute
    ``retry`` to the module, after which ``from helpers import retry`` would hand out the module. Keep public
    names for what ``__all__`` promises; ``from helpers.retry import ...`` still finds the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _WHERE:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'helpers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
