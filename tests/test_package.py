"""The public surface of helpers: every advertised name imports, and importing helpers stays light."""

from __future__ import annotations

import subprocess
import sys

import helpers


def test_every_public_name_imports() -> None:
    assert set(helpers.__all__) == set(helpers._WHERE)
    for name in helpers.__all__:
        assert getattr(helpers, name) is not None, name


def test_unknown_name_is_a_clear_attribute_error() -> None:
    try:
        helpers.not_a_thing  # noqa: B018
    except AttributeError as error:
        assert "not_a_thing" in str(error)
    else:
        raise AssertionError("expected AttributeError")


def test_import_helpers_does_not_load_heavy_modules() -> None:
    code = "import sys, helpers; print(' '.join(m for m in ('pydantic_ai', 'matplotlib', 'httpx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"`import helpers` loaded {out}"


def test_a_public_name_is_not_shadowed_by_its_module() -> None:
    """``retry`` is both a function and the module defining it: whichever is imported first, the package
    hands out the function, and ``from helpers.retry import ...`` still reads the module."""
    code = (
        "from helpers.retry import backoff\n"
        "import helpers.batch\n"
        "from helpers import retry, with_retries\n"
        "import helpers\n"
        "assert callable(retry) and retry.__name__ == 'retry', retry\n"
        "assert helpers.retry is retry and callable(with_retries)\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
