"""The delivery benchmark, in its small mode, runs end to end and reports what it measured.

It is a real run (PostgreSQL, Redis, the SendGrid server and the workers as processes),
so it also pins the pipeline: every lesson ends ``sent``, once, through batched requests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL, REDIS_URL

ROOT = Path(__file__).resolve().parent.parent


def figure(report: str, label: str) -> float:
    m = re.search(rf"^\s*{re.escape(label)}\s*([\d,.]+)", report, re.MULTILINE)
    assert m, f"no {label!r} line in the report:\n{report}"
    return float(m.group(1).replace(",", ""))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_small_benchmark_sends_every_lesson_once_and_reports_both_rates() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.delivery", "--subscribers", "2000", "--baseline", "200",
         "--workers", "2", "--redis-url", REDIS_URL, "--pg-admin-url", PG_ADMIN_URL],
        # ~15 s on a quiet machine; the ceiling is for a machine busy with other work.
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = run.stdout

    assert "all sent: yes (sent=2,000)" in report
    for line in ("machine:", "software:", "parameters: 2,000 due subscribers, 2 workers",
                 "wall time, tick start to all sent:", "CPU seconds, workers and tick:",
                 "worker peak memory:", "ratio ours/baseline:", "targets:"):
        assert line in report, f"{line!r} missing from:\n{report}"
    assert figure(report, "lessons/s:") > 0
    assert figure(report, "emails/s:") > 0
    assert figure(report, "emails:") == 200
    assert re.search(r"finished 200, failed 0", report)
    # Batched: far fewer requests than lessons, every recipient accepted exactly once.
    assert figure(report, "API requests:") < 100
    assert "recipients accepted: 2,000, duplicates: 0" in report
    assert 0 < figure(report, "worker peak memory:") < 1000
    assert len(re.findall(r": (PASS|FAIL) ", report)) == 3

    # The run cleans up after itself: its database is gone.
    name = re.search(r"database (mc_bench_\w+)", run.stderr)
    assert name, run.stderr[-2000:]
    admin = sa.create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:
            left = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                {"n": name.group(1)}).all()
    finally:
        admin.dispose()
    assert left == []
