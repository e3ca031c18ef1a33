"""Every benchmark runs one way, ``python -m bench.NAME``, documented in one place, and
the programs a benchmark needs beyond pip are installed by it or named with the command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.tools import ensure_programs, missing_programs

ROOT = Path(__file__).resolve().parent.parent
RUNNABLE = sorted(
    path.stem for path in (ROOT / "bench").glob("*.py")
    if 'if __name__ == "__main__":' in path.read_text()
)


def test_the_benchmarks_are_found() -> None:
    assert {"admin", "chaos", "delivery", "send_rate", "tracking", "webhook"} <= set(RUNNABLE)


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNNABLE)
def test_each_benchmark_runs_as_a_module_and_says_so_in_its_usage(name: str) -> None:
    run = subprocess.run([sys.executable, "-m", f"bench.{name}", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"usage: python -m bench.{name} "), run.stdout[:200]


@pytest.mark.parametrize("doc", ["bench/README.md", "README.md"])
def test_the_docs_run_every_benchmark_as_a_module_and_no_other_way(doc: str) -> None:
    text = (ROOT / doc).read_text()
    for name in RUNNABLE:
        assert f"python -m bench.{name}" in text, f"{doc} does not say how to run {name}"
    assert not re.search(r"python3? bench/", text), f"{doc} runs a benchmark as a script"


def test_a_program_on_the_path_needs_nothing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    program = tmp_path / "wrk"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert missing_programs({"wrk": "wrk"}) == {}
    assert ensure_programs({"wrk": "wrk"}) is None


def test_a_missing_program_without_apt_get_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither wrk nor apt-get here
    problem = ensure_programs({"wrk": "wrk", "redis-server": "redis-server"})
    assert problem == ("needs redis-server, wrk: install them with "
                       "`apt-get install redis-server wrk` (as root)")
