"""Start a server as a child process, wait until it answers, stop it, watch its memory: for
benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil


def with_this_python(env: dict[str, str]) -> dict[str, str]:
    """`env` with this interpreter's bin folder first on PATH: commands a child starts by name
    (`python -m ...` in dvc.yaml, `uvicorn` from `mlflow models serve`) are this environment's,
    even when it is not activated."""
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(
    url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None
) -> None:
    """Poll `url` until it answers 200, failing early (with the log) if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            detail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(
                f"process exited with {proc.returncode} before {url} answered\n{detail}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server and its process group."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def start_server(
    cmd: list[str], cwd: Path, env: dict, log: Path, health: str, timeout: float
) -> subprocess.Popen:
    """Run `cmd` in its own process group, output to `log`; return once `health` answers 200."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(health, proc, timeout, log)
    except BaseException:
        stop(proc)
        raise
    return proc


class PeakMemory:
    """The highest summed resident memory (RSS) of a process and its descendants, sampled every
    `every` seconds in a thread while the `with` block runs."""

    def __init__(self, pid: int, every: float = 0.01) -> None:
        self.root = psutil.Process(pid)
        self.every = every
        self.start = self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        total = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
