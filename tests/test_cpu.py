"""helpers.cpu: the CPU-bound work of lesson 08 counts like the simulator, runs in worker processes, and says how much
CPU it took; Machine sees what other programs compute meanwhile."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers.cpu import Machine, cores, count_and_clock, count_tokens
from helpers.simulator._text import count_tokens as simulator_count

ROOT = Path(__file__).resolve().parent.parent

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


def test_count_and_clock_says_how_much_cpu_and_where() -> None:
    texts = [f"text number {i} " * 20_000 for i in range(4)]
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        counted = list(pool.map(count_and_clock, texts))
    assert [c.tokens for c in counted] == [count_tokens(t) for t in texts]
    assert all(c.cpu > 0 for c in counted)
    assert os.getpid() not in {c.pid for c in counted}  # counted in the worker processes
    here = count_and_clock(texts[0])
    assert here.pid == os.getpid() and here.tokens == counted[0].tokens


def test_count_and_clock_counts_its_own_thread_only() -> None:
    # two threads counting at once: each one's CPU is its own, not the process's (which would be about double)
    with ThreadPoolExecutor(max_workers=2) as pool:
        both = list(pool.map(count_and_clock, ["word " * 200_000] * 2))
    began = time.thread_time()
    count_tokens("word " * 200_000)
    alone = time.thread_time() - began
    assert all(c.cpu < 1.6 * alone for c in both)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the machine's CPU counters are Linux's /proc/stat")
def test_machine_sees_another_program_keep_a_core_busy() -> None:
    with Machine() as quiet:
        time.sleep(0.5)
    hog = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "cpu_hog.py")])
    try:
        time.sleep(0.3)  # the hog is up and spinning
        with Machine() as busy:
            time.sleep(1.0)
    finally:
        hog.kill()
        hog.wait()
    assert busy.wall >= 1.0
    others = busy.others(own_cpu=0.0)
    assert others is not None and 0.7 < others < 1.6  # one core's worth, and a little of everything else
    assert (quiet.others(own_cpu=0.0) or 0.0) < others - 0.5
    assert busy.free_cores(0.0) == pytest.approx(max(0.0, cores() - others))
    assert busy.others(own_cpu=busy.wall * 10) == 0.0  # never below nothing


def test_cores_is_what_this_process_may_use() -> None:
    assert 1 <= cores() <= (os.cpu_count() or 1)
