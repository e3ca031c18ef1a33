"""What a benchmark ran on: every report prints it beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil
import sqlalchemy as sa
from redis import Redis


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(engine: sa.Engine | None = None, conn: Redis | None = None) -> dict[str, str]:
    """CPU, cores, RAM, OS, load average, and the versions of Python and, when given a
    connection to them, PostgreSQL, Redis, RQ and sendgrid."""
    software = [f"Python {platform.python_version()}"]
    if engine is not None:
        with engine.connect() as c:
            pg = str(c.execute(sa.text("SHOW server_version")).scalar_one()).split()[0]
        software.append(f"PostgreSQL {pg}")
    if conn is not None:
        import rq
        import sendgrid

        software += [f"Redis {conn.info('server')['redis_version']}", f"RQ {rq.__version__}",
                     f"sendgrid {sendgrid.__version__}"]
    return {
        "cpu": cpu_model(),
        "cores": f"{psutil.cpu_count(logical=False)} physical, {psutil.cpu_count()} logical",
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "software": ", ".join(software),
        "load": load_average(),
    }
