"""The README's quick start works from a clean checkout.

``flask --app wsgi dev`` (what ``make run`` ends in) is run on a copy of the working tree
with no Redis reachable, so it must start its own embedded one. Once web, worker and cron
are up, the last lines on the screen say where to sign in, with the one-time password, and
they stay the last lines while the system idles: routine jobs (the tracking flush every
5 s, the tick) log below INFO. Then a visitor signs up on the landing page and the
confirmation email lands in the outbox, sent by the real worker; Ctrl-C then stops web,
worker, cron and the embedded Redis, and the command exits 0.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
import requests

from tests.helpers import copy_working_tree

pytestmark = pytest.mark.slow

# Settings a developer's shell may carry that would point the copy somewhere else.
CONFIG_VARS = (
    "DATABASE_URL", "REDIS_URL", "BASE_URL", "MAIL_BACKEND", "MAIL_FROM", "OUTBOX_DIR",
    "SECRET_KEY", "MINICOURSE_ENV", "MINICOURSE_INSTANCE", "LESSONS_DIR", "COURSE", "PORT",
    "RATELIMIT_STORAGE_URI", "RATELIMIT_ENABLED", "SIGNUP_RATE_LIMIT", "FLASK_APP",
    "FLASK_DEBUG", "SENDGRID_API_KEY", "SMTP_HOST",
)
NOTHING_LISTENS = "redis://127.0.0.1:1/0"
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
EMBEDDED_RE = re.compile(r"started an embedded one at unix://(\S+)")
LOGIN_RE = re.compile(r"Admin login: (http://\S+/admin/login) as (\S+) with password (\S+) ")
READY = "| Ready: web, worker and cron are running."
IDLE_SECONDS = 12  # two tracking flushes (every 5 s) and the first tick's aftermath
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, run: DevRun) -> T:
    """Poll ``probe`` until it returns something, failing early if the runner died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result is not None:
            return result
        if run.proc.poll() is not None:
            pytest.fail(f"flask dev exited ({run.proc.returncode}) before {what}:\n{run.output()}")
        time.sleep(0.3)
    pytest.fail(f"no {what} within {timeout:.0f} s; log:\n{run.output()}")


def landing_page(url: str) -> Callable[[], requests.Response | None]:
    def probe() -> requests.Response | None:
        try:
            response = requests.get(url, timeout=3)
        except requests.RequestException:
            return None
        return response if response.status_code == 200 else None

    return probe


def confirmation_in(outbox: Path, address: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        for path in sorted(outbox.glob("*.eml")):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if address not in str(msg["To"]):
                continue
            for part in msg.walk():
                if part.get_content_maintype() == "text" and "/confirm/" in part.get_content():
                    return path.name
        return None

    return probe


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    dest = tmp_path / "checkout"
    copy_working_tree(dest)
    return dest


@pytest.fixture
def dev_env(checkout: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    env.update(
        MINICOURSE_INSTANCE=str(tmp_path / "instance"),
        REDIS_URL=NOTHING_LISTENS,  # so the embedded Redis is what runs
        PYTHONPATH=str(checkout),  # the copy's code, not the installed one
        PYTHONUNBUFFERED="1",
    )
    return env


@dataclass
class DevRun:
    """``flask dev`` running in its own process group, as if typed in a terminal."""

    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    seen: list[psutil.Process] = field(default_factory=list)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def note_processes(self) -> None:
        """Remember everything it started, to check (and clean up) after it is gone."""
        self.seen.extend(psutil.Process(self.proc.pid).children(recursive=True))
        embedded = EMBEDDED_RE.search(self.output())
        if embedded:
            pidfile = Path(embedded.group(1)).parent / "redis.pid"
            self.seen.append(psutil.Process(int(pidfile.read_text())))


@pytest.fixture
def dev_run(checkout: Path, dev_env: dict[str, str], tmp_path: Path) -> Iterator[DevRun]:
    port = free_port()
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "dev", "--port", str(port)],
            cwd=checkout, env=dev_env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,  # its own group, like a terminal
        )
    run = DevRun(proc, f"http://127.0.0.1:{port}", log)
    yield run
    if proc.poll() is None:  # the test failed half-way: stop it gently, then not
        run.note_processes()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for leftover in still_running(run.seen):
        leftover.kill()


def still_running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still alive after a short grace period (zombies count as gone)."""
    _, alive = psutil.wait_procs(procs, timeout=5)
    running = []
    for proc in alive:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
        except psutil.NoSuchProcess:
            pass
    return running


def ready_banner(run: DevRun) -> Callable[[], list[str] | None]:
    """The log's lines from the "Ready" line on, once it has been printed."""
    def probe() -> list[str] | None:
        lines = run.output().splitlines()
        starts = [i for i, line in enumerate(lines) if READY in line]
        return lines[starts[0]:] if starts else None

    return probe


def test_quick_start_runs_signup_to_confirmation_email_and_stops_cleanly_on_ctrl_c(
    dev_run: DevRun, dev_env: dict[str, str]
) -> None:
    proc, base = dev_run.proc, dev_run.base
    # No request yet: the web server would log it. The banner's end comes when all is up.
    wait_for("the ready banner", ready_banner(dev_run), 90, dev_run)
    time.sleep(IDLE_SECONDS)
    tail = ready_banner(dev_run)() or []
    first_login = LOGIN_RE.search(dev_run.output())
    assert first_login, f"no admin login line with a password:\n{dev_run.output()}"
    url, email_address, password = first_login.groups()
    assert url == f"{base}/admin/login" and email_address == "admin@example.com"
    assert len(tail) == 2, (
        f"after the ready banner, {IDLE_SECONDS} s of idling printed more lines:\n"
        + "\n".join(tail[2:])
    )
    assert LOGIN_RE.search(tail[1]), tail
    assert LOGIN_RE.search(tail[1]).groups() == (url, email_address, password), tail  # type: ignore[union-attr]
    assert f"admin reset {email_address}" in tail[1], "the last line says how to get a new one"

    wait_for("landing page", landing_page(base + "/"), 60, dev_run)
    embedded = EMBEDDED_RE.search(dev_run.output())
    assert embedded, f"the log does not say an embedded Redis was started:\n{dev_run.output()}"
    dev_run.note_processes()

    visitor = requests.Session()
    page = visitor.get(base + "/", timeout=10)
    token = CSRF_RE.search(page.text)
    assert token, "the landing page has no signup form with a CSRF token"
    address = "newcomer@example.org"
    response = visitor.post(base + "/", timeout=10, data={
        "email": address, "name": "Newcomer", "consent": "y",
        "timezone": "Europe/Berlin", "csrf_token": token.group(1),
    })
    assert response.status_code == 200, response.text[:2000]

    outbox = Path(dev_env["MINICOURSE_INSTANCE"]) / "outbox"
    wait_for(f"confirmation email to {address} in {outbox}",
             confirmation_in(outbox, address), 30, dev_run)

    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
    try:
        code = proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"flask dev still running 20 s after Ctrl-C:\n{dev_run.output()}")
    assert code == 0, dev_run.output()
    assert still_running(dev_run.seen) == [], dev_run.output()
    assert not Path(embedded.group(1)).exists(), "the embedded Redis left its socket behind"
