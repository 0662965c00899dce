"""A real SMTP server on loopback (aiosmtpd) that records what it receives.

It counts SMTP sessions by their EHLO/HELO (the Controller's own start-up probe never says
EHLO), stamps each accepted message with the time it arrived, and can answer chosen
recipients with chosen codes ("550 ..." permanently, "451 ..." for now, "421 ..." and hang up),
once or always.
"""

from __future__ import annotations

import asyncio
import email
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy

from aiosmtpd.controller import Controller

from service.contacts.messaging.outbox import Messaging
from service.settings import Settings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    at: float  # time.monotonic() when the server accepted it
    peer: tuple  # the client's (host, port): one per SMTP connection
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.content, policy=default_policy)  # type: ignore[return-value]

    @property
    def outbox_id(self) -> int:
        return int(self.message["X-Teichaku-Outbox"])


@dataclass
class SinkHandler:
    # address -> responses to RCPT TO, used up one per attempt ("550 ..." or "451 ...").
    # An address mapped to a string (not a list) is answered that way every time.
    rcpt_codes: dict[str, list[str] | str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    sessions: list[tuple] = field(default_factory=list)  # peers that said EHLO/HELO
    refused: list[tuple[str, str]] = field(default_factory=list)  # (address, response)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.lock:
            if session.peer not in self.sessions:
                self.sessions.append(session.peer)
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):
        session.host_name = hostname
        with self.lock:
            if session.peer not in self.sessions:
                self.sessions.append(session.peer)
        return f"250 {server.hostname}"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            planned = self.rcpt_codes.get(address)
            response = (planned.pop(0) if planned else None) if isinstance(planned, list) else planned
        if response:
            with self.lock:
                self.refused.append((address, response))
            if response.startswith("421"):  # as real servers do: say so, then hang up
                asyncio.get_running_loop().call_soon(server.transport.close)
            return response
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received.append(
                Received(
                    time.monotonic(), session.peer, envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)
                )
            )
        return "250 OK"

    # -- for the tests ------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self.sessions)

    def outbox_ids(self) -> list[int]:
        with self.lock:
            return [r.outbox_id for r in self.received]


@contextmanager
def smtp_sink(port: int | None = None, **kw) -> Iterator[tuple[SinkHandler, int]]:
    """An aiosmtpd server on 127.0.0.1 (a free port unless given); yields (handler, port)."""
    handler = SinkHandler(**kw)
    port = port or free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def smtp_messaging(settings: Settings, port: int, **updates) -> Messaging:
    """The real messaging stack (SmtpAdapter) pointed at the sink on ``port``. Fast by
    default (100 e-mails a second) unless a test sets its own rate."""
    values = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_from": "office@example.jp",
              "send_rate_per_second": 100.0} | updates  # fmt: skip
    return Messaging.from_settings(settings.model_copy(update=values))
