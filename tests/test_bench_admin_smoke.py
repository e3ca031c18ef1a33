"""The admin pages benchmark, in its small mode, runs end to end and reports what it measured.

A real run: a fresh PostgreSQL database seeded with 20,000 subscribers and their deliveries,
gunicorn serving the app, and an admin signed in through the login form with its CSRF token.
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
PAGES = ("list, page 1", "list, deep page (half way)", "list by email, deep page",
         "list by progress", "search, part of an email", "search, part of a name",
         "filter, status", "filter, next lesson", "filter, status + lesson, oldest",
         "filter, status, any order",
         "subscriber page", "dashboard", "lessons (per-lesson figures, loss, links)",
         "a lesson's page")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_small_admin_benchmark_times_every_page_and_gives_verdicts() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.admin", "--subscribers", "20000", "--requests", "20",
         "--redis-url", REDIS_URL, "--pg-admin-url", PG_ADMIN_URL],
        # ~15 s on a quiet machine; the ceiling is for a machine busy with other work.
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    report = run.stdout

    for line in ("Minicourse admin pages benchmark", "machine:", "software:", "PostgreSQL",
                 "load average (1, 5, 15 min) before:", "parameters: 20,000 subscribers,",
                 "20 timed requests per page", "seeding:", "targets (p95 < 300 ms):",
                 "cached figures, computed by the background refresh", "  loss: "):
        assert line in report, f"{line!r} missing from:\n{report}"
    deliveries = re.search(r"subscribers, ([\d,]+) deliveries, ([\d,]+) events", report)
    assert deliveries, report
    # About five deliveries per subscriber, as a list looks some months after launch.
    assert 60_000 < int(deliveries.group(1).replace(",", "")) < 140_000
    assert int(deliveries.group(2).replace(",", "")) > 0

    verdicts = dict(re.findall(r"^  (.+?): (PASS|FAIL|MISSING) \(", report, re.MULTILINE))
    assert set(verdicts) == set(PAGES), report
    assert verdicts["list, page 1"] == "PASS", report
    assert "PASS" in verdicts.values()
    for page in PAGES:
        if verdicts[page] != "MISSING":
            row = re.search(rf"^{re.escape(page)}\s+(\d+) ms\s+(\d+) ms\s+(\d+) ms$", report,
                            re.MULTILINE)
            assert row, f"no figures for {page!r} in:\n{report}"
            p50, p95, top = (int(x) for x in row.groups())
            assert p50 <= p95 <= top

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
