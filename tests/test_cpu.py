"""helpers.cpu: the CPU-bound work of lesson 07 counts like the simulator and runs in worker processes."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from helpers.cpu import count_tokens
from helpers.simulator._text import count_tokens as simulator_count

TEXTS = [
    "",
    "   \n\t ",
    "hello",
    "hello world",
    "abcdefghijklm 1234567 ,,, 12ab34cd",
    "Reply: a long-answer! 2+2=4",
    "x" * 13,
    "naïve café at 100 °C",
    "What is 17 + 25? Answer with the number only.",
    "Document 3: the model answers each request with a reply of 42 tokens, more or less. " * 50,
]


@pytest.mark.parametrize("text", TEXTS)
def test_counts_the_way_the_simulator_does(text: str) -> None:
    assert count_tokens(text) == simulator_count(text)


def test_runs_of_letters_and_digits() -> None:
    assert count_tokens("abcdef") == 1 and count_tokens("abcdefg") == 2  # 6 letters a token
    assert count_tokens("123") == 1 and count_tokens("1234") == 2  # 3 digits a token
    assert count_tokens("a1b2") == 4  # a run ends where the kind of character changes
    assert count_tokens("?!") == 2  # every other character is a token of its own


def test_refuses_what_is_not_text() -> None:
    with pytest.raises(TypeError, match="takes a string"):
        count_tokens(b"bytes")  # type: ignore[arg-type]


def test_spawned_worker_processes_can_import_it() -> None:
    texts = [f"text number {i} " * 100 for i in range(4)]
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert list(pool.map(count_tokens, texts)) == [count_tokens(t) for t in texts]
