"""Servers the benchmarks start: a subprocess in its own process group, its output in
bench/data/<name>.log, ready when its ``/healthz`` answers 200 (bench/load.py, bench/pages.py); and
the CPU a process has used (bench/mail.py, bench/profile_webhooks.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"


def cpu_seconds(pid: int) -> float:
    """CPU (user + system, seconds) the process ``pid`` has used so far, from /proc; OSError once it is gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A server subprocess in its own process group, its output in bench/data/<name>.log."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int) -> None:
        DATA.mkdir(parents=True, exist_ok=True)
        self.name, self.port = name, port
        self.log_path = DATA / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.p = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self._log.closed:
            return
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)  # our own group: uvicorn and its workers
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self._log.close()
