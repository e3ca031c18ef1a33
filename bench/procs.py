"""The processes a benchmark starts, and what they cost: CPU seconds and peak memory.

Everything measured runs as its own process, as in production, so the figures are read
from the outside with psutil: CPU from ``cpu_times()`` (a worker's work horses are reaped
by the worker, so their time lands in its ``children_*`` fields), memory from each
process's ``VmHWM`` (the kernel's own peak RSS) sampled over the process tree.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil
from redis import Redis
from rq import Worker

ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sendgrid_server(latency: float,
                          logfile: IO[bytes]) -> tuple[subprocess.Popen[bytes], str]:
    """The local SendGrid-compatible server in its own process; returns it and its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sendgrid_server", "--port", str(port),
         "--latency", str(latency), "--rate-limit", "1000000"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=logfile,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    if not url.startswith("http://"):
        stop([proc])
        raise RuntimeError("the SendGrid server did not start (see its log)")
    return proc, url


def start_processes(argv: list[str], count: int, env: dict[str, str],
                    logfile: IO[bytes], name: str) -> tuple[list[subprocess.Popen[bytes]],
                                                            list[str]]:
    """``count`` copies of ``argv`` (``{name}`` is replaced by each one's worker name)."""
    names = [f"{name}-{i}-{os.getpid()}" for i in range(count)]
    procs = [
        subprocess.Popen([a.replace("{name}", n) for a in argv], cwd=ROOT, env=env,
                         stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for n in names
    ]
    return procs, names


def wait_for_workers(conn: Redis, names: list[str], procs: list[subprocess.Popen[bytes]],
                     timeout: float = 60.0) -> None:
    """Until every worker has registered in Redis, that is, is ready to take jobs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker exited while starting (see the worker log)")
        registered = {w.name for w in Worker.all(connection=conn)}
        if set(names) <= registered:
            return
        time.sleep(0.05)
    raise RuntimeError(f"workers did not register within {timeout:.0f} s")


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM (RQ's warm shutdown), then SIGKILL what is left: only these processes."""
    procs = [p for p in procs if p.poll() is None]
    for p in procs:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            for child in _children(p.pid):
                child.kill()
            p.kill()
            p.wait()


def _children(pid: int) -> list[psutil.Process]:
    out = []
    for child in descendants(pid):
        try:
            out.append(psutil.Process(child))
        except psutil.NoSuchProcess:
            pass
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``. Linux lists a task's children in /proc, which is ~100x
    cheaper than psutil's scan of every process: the sampler must not steal the CPU it
    measures."""
    if not os.path.exists(f"/proc/{pid}/task"):
        try:
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except (OSError, ValueError):
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of these processes, their reaped children and their live children."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
        for child in descendants(pid):
            try:
                c = psutil.Process(child).cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += c.user + c.system
    return total


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each group of process trees, of this process (the polling and
    sampling) and of the whole machine; subtract two snapshots to get a window's cost."""
    out = {name: cpu_seconds(pids) for name, pids in groups.items()}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["bench"] = usage.ru_utime + usage.ru_stime
    out["machine"] = machine_busy_seconds()
    return out


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (every process, ours or not)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _peak_rss(pid: int) -> int:
    """Peak resident set size in bytes (``VmHWM``), or the current RSS off Linux."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


@dataclass
class MemorySampler:
    """Samples the peak RSS of the root processes and all their descendants (work horses,
    RQ's scheduler) every ``interval`` seconds, in a background thread."""

    roots: list[int]
    interval: float = 0.05
    peaks: dict[int, int] = field(default_factory=dict)
    kind: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for root in self.roots:
            for pid, kind in [(root, "worker")] + [(c, "child") for c in descendants(root)]:
                peak = _peak_rss(pid)
                if peak > self.peaks.get(pid, 0):
                    self.peaks[pid] = peak
                    self.kind[pid] = kind

    def max_rss(self, kind: str | None = None) -> int:
        """The largest single-process peak, of all processes or of one kind."""
        return max((v for pid, v in self.peaks.items() if kind in (None, self.kind[pid])),
                   default=0)

    @property
    def processes_seen(self) -> int:
        return len(self.peaks)
