"""Self-check cells for the exercises: a verdict a learner can read, never a traceback (every lesson)."""

from __future__ import annotations

from typing import Any

__all__ = ["check", "environment", "plain"]


def check(condition: bool, right: str, wrong: str) -> None:
    """Print ✅ and ``right`` if ``condition`` holds, otherwise ❌ and ``wrong`` (a hint)."""
    print(("✅ " + right) if condition else ("❌ Not yet: " + wrong))


def environment(target: Any) -> None:
    """Print the versions that matter and where calls go (the first cell of every lesson)."""
    import platform
    from importlib.metadata import version

    names = ["httpx", "pydantic-ai-slim", "openai", "ipywidgets", "matplotlib"]
    found = []
    for name in names:
        try:
            found.append(f"{name.removesuffix('-slim')} {version(name)}")
        except Exception:
            found.append(f"{name} (not installed)")
    print(f"Python {platform.python_version()} · " + " · ".join(found))
    print(target.describe())


def plain(text: Any) -> str:
    """``text`` in lower case without surrounding spaces, quotes or final punctuation: ``"Alpha."`` → ``"alpha"``.
    The simulator answers exactly; a real model may add a capital or a full stop, and the lessons' checks should
    not mind."""
    return str(text).strip().strip("\"'`*").rstrip(".!").strip().lower()
