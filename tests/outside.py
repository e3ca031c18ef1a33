"""Files some tests need from outside the repository, such as the seed article in
``../shared/``: the suite must pass from a clone alone.

Where such a file is missing, the test skips and says what and where; under ``CI=true``
(``.ci/run`` has everything in place) a missing file is a failure, so CI never goes green
by skipping what it was meant to check.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def need_file(path: Path, what: str) -> Path:
    """``path`` if it is there; otherwise skip the test (fail it on CI), saying why."""
    if path.is_file():
        return path
    reason = f"{what} is missing: {path} is outside the repository and not here"
    if on_ci():
        pytest.fail(f"{reason} (CI=true, where it must be)")
    pytest.skip(reason)
