"""Self-check cells for the exercises: a verdict a learner can read, never a traceback (every lesson)."""

from __future__ import annotations

from typing import Any

__all__ = ["check", "environment"]


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
