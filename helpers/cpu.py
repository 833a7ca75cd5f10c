"""Work that computes instead of waiting, for threads and processes to compete on (lesson 07).

``count_tokens(text)`` counts tokens the way the simulator does, one character at a time in pure Python: it
never waits, so it holds the GIL the whole time. It lives in a module, not in a notebook cell, because a
``ProcessPoolExecutor`` sends its workers the function by module and name: under the *spawn* and *forkserver*
start methods (the default on macOS and Windows, and on Linux from Python 3.14) a function defined in a
notebook cannot be found by the worker processes. Import it as ``from helpers.cpu import count_tokens``.
"""

from __future__ import annotations

__all__ = ["count_tokens"]

_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset("0123456789")


def count_tokens(text: str) -> int:
    """Tokens in ``text``, counted character by character in pure Python: CPU-bound (lesson 07).

    The same rule as the simulator's token counts: a run of letters is a token per 6 letters (rounded up), a
    run of digits a token per 3 digits, any other character that is not a space a token of its own. About a
    second of work for 10-20 million characters, depending on the machine.
    """
    if not isinstance(text, str):
        raise TypeError(f"count_tokens() takes a string (got {type(text).__name__})")
    tokens = 0
    run_kind = ""  # "letters", "digits" or "" (neither) for the run the previous character belongs to
    run_length = 0
    for char in text:
        if char in _LETTERS:
            kind = "letters"
        elif char in _DIGITS:
            kind = "digits"
        else:
            kind = ""
        if kind != run_kind and run_length:
            tokens += _run_tokens(run_kind, run_length)
            run_length = 0
        run_kind = kind
        if kind:
            run_length += 1
        elif not char.isspace():
            tokens += 1
    if run_length:
        tokens += _run_tokens(run_kind, run_length)
    return tokens


def _run_tokens(kind: str, length: int) -> int:
    per_token = 6 if kind == "letters" else 3
    return (length + per_token - 1) // per_token
