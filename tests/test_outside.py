"""A test that needs a file from outside the repository skips on a bare clone, saying
why, and fails under CI=true: see ``tests/outside.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import copy_working_tree
from tests.outside import need_file

OWN_WORDS = "tests/test_lessons.py::test_lessons_are_in_our_own_words_not_copied_from_the_article"


def test_a_file_that_is_there_is_given_back(tmp_path: Path) -> None:
    present = tmp_path / "seed.txt"
    present.write_text("an article")
    assert need_file(present, "the seed") == present


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_a_missing_file_skips_outside_ci_and_says_what_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception) as skipped:
        need_file(tmp_path / "nope.txt", "the seed article")
    assert "the seed article is missing" in str(skipped.value)
    assert str(tmp_path / "nope.txt") in str(skipped.value)


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_a_missing_file_fails_under_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception) as failed:
        need_file(tmp_path / "nope.txt", "the seed article")
    assert "CI=true" in str(failed.value) and str(tmp_path / "nope.txt") in str(failed.value)


@pytest.mark.slow
@pytest.mark.parametrize("ci, outcome, code", [(None, "1 skipped", 0), ("true", "1 failed", 1)])
def test_own_words_test_on_a_clone_without_shared_folder(
    tmp_path: Path, ci: str | None, outcome: str, code: int
) -> None:
    """The real test, run in a copy of the work tree that has no ../shared/ beside it."""
    clone = tmp_path / "clone"
    copy_working_tree(clone)
    assert not (tmp_path / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    run = subprocess.run(
        [sys.executable, "-m", "pytest", OWN_WORDS, "-rsf", "-p", "no:cacheprovider",
         "-p", "no:randomly"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == code, run.stdout + run.stderr
    assert outcome in run.stdout, run.stdout
    assert "the seed article the lessons were written from is missing" in run.stdout
