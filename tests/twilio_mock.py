"""Twilio's own API, mocked from its own OpenAPI description by Prism (``@stoplight/prism-cli``).

Prism serves ``twilio_api_v2010.json`` (Twilio's own, MIT, vendored in ``tests/twilio-oai/``) and
validates every request against it: a request that does not conform gets a 422 problem document
instead of the 201, so a message the real ``twilio`` client created through it is one whose
request was right. Prism is installed from ``tests/package.json`` (``make test`` runs ``npm ci``).

Use it in a test module with ``from tests.twilio_mock import prism  # noqa: F401``; the server is
started once per test session and stopped at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "tests" / "twilio-oai" / "twilio_api_v2010.json"
PRISM = REPO / "tests" / "node_modules" / ".bin" / "prism"
START_TIMEOUT = 90.0


@dataclass(frozen=True)
class Prism:
    url: str  # http://127.0.0.1:PORT, to use as TEICHAKU_TWILIO_API_BASE_URL
    log: Path  # Prism's own log: one block per request, with its validation verdict

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prism]:
    if not SPEC.is_file():
        pytest.fail(
            f"Twilio's OpenAPI description is missing: expected {SPEC} "
            "(tests/twilio-oai/, vendored from twilio/twilio-oai)"
        )
    if not PRISM.exists():
        pytest.fail(
            f"Prism is not installed ({PRISM} is missing): run `make test`, "
            "or `cd tests && npm ci --no-audit --no-fund --ignore-scripts`"
        )
    log = tmp_path_factory.mktemp("prism") / "prism.log"
    port = free_port()
    env = {**os.environ, "SCARF_ANALYTICS": "false", "NO_COLOR": "1", "FORCE_COLOR": "0"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(PRISM), "mock", "--errors", "-h", "127.0.0.1", "-p", str(port), str(SPEC)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO / "tests",
            env=env,
            start_new_session=True,  # its own process group, so its children stop with it
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            if proc.poll() is not None:
                pytest.fail(f"Prism exited with {proc.returncode} before listening:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"Prism did not listen on 127.0.0.1:{port} within {START_TIMEOUT:.0f} s:\n{_tail(log)}")
            time.sleep(0.2)
        yield Prism(f"http://127.0.0.1:{port}", log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group we started, by its id
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
