"""Programs a benchmark drives that pip cannot install, taken from Debian's packages.

``bench.tracking`` measures gunicorn with ``wrk`` and runs a private ``redis-server``.
wrk stays the load generator: it is a small C program that keeps 32 connections busy on
one thread, while a Python generator on the same two cores would take the CPU the server
is being measured on, and its own limit would become the figure. When one is missing and
this runs as root where ``apt-get`` exists (the project's machines and CI, as ``.ci/run``
installs Chromium), it is installed on the spot; otherwise the benchmark stops with the
command to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .procs import log

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


def missing_programs(programs: dict[str, str]) -> dict[str, str]:
    """Those of ``programs`` (command -> Debian package) not on the PATH."""
    return {cmd: pkg for cmd, pkg in programs.items() if shutil.which(cmd) is None}


def ensure_programs(programs: dict[str, str]) -> str | None:
    """Install the Debian packages of missing ``programs`` if we can.

    Returns None once every command is on the PATH, else one line saying what to do.
    """
    missing = missing_programs(programs)
    if not missing:
        return None
    packages = sorted(set(missing.values()))
    by_hand = (f"needs {', '.join(sorted(missing))}: install "
               f"{'it' if len(packages) == 1 else 'them'} with "
               f"`apt-get install {' '.join(packages)}` (as root)")
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return by_hand
    log(f"{', '.join(sorted(missing))} missing: installing {' '.join(packages)} "
        "from Debian's packages")
    install = ["apt-get", "-q", "install", "-y", "--no-install-recommends", *packages]
    env = {**os.environ, **APT_ENV}
    # The package lists may be missing or stale on a fresh machine: update once, retry.
    if _run(install, env) != 0 and (_run(["apt-get", "-q", "update"], env) != 0
                                    or _run(install, env) != 0):
        return f"{by_hand}; apt-get failed (its output is above)"
    still = missing_programs(programs)
    return by_hand if still else None


def _run(argv: list[str], env: dict[str, str]) -> int:
    """Run apt-get with its output on stderr, where progress goes (stdout is the report)."""
    return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr,
                          stderr=sys.stderr, check=False).returncode
