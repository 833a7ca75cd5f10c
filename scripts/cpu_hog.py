"""Keep one CPU core busy, as another program on a busy machine would, until stopped or orphaned.

    python3 scripts/cpu_hog.py          # one core; run it twice for two

The test command (scripts/test.py) starts two of these beside the notebook run, so that every claim a lesson
asserts is checked on a machine with no idle core. Pure Python, no sleeping: it never releases the core. It
stops by itself when the process that started it goes away, so a killed test run leaves nothing spinning.
"""

from __future__ import annotations

import contextlib
import os


def main() -> None:
    parent = os.getppid()
    while True:
        total = 0
        for i in range(2_000_000):  # about a tenth of a second of work, then a glance at the parent
            total += i % 7
        if os.getppid() != parent:
            return


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
