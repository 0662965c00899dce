"""A real SMTP server on loopback (aiosmtpd) that records what it receives.

It counts SMTP sessions by their EHLO/HELO (the Controller's own start-up probe never says
EHLO), stamps each accepted message with the time it arrived, and can answer chosen
recipients with chosen codes ("550 ..." permanently, "451 ..." for now, "421 ..." and hang up),
once or always. It records the QUITs it is sent and the time of every MAIL FROM, can hang up on
every open session (as a server does at its idle timeout), at the next MAIL FROM, or in the middle
of a chosen recipient's DATA. It offers PIPELINING (RFC 2920) in its EHLO answer, as Postfix does,
unless made with ``pipelining=False``, and records every read it takes from a client (``reads``):
commands that arrive together, pipelined, come in one read. It can be slow to answer RCPT TO
(``rcpt_delay``), and can cut every answer in two writes a moment apart (``split_answers``), so
that no answer arrives whole in one read.

``smtp_sink(tls=True)`` makes it a server as in production: STARTTLS required, with a certificate
for 127.0.0.1 from a throwaway CA made at test time (``trustme``), and sign-in (AUTH) required;
``secure_settings()`` is what the adapter needs to reach it (the CA file: the certificate is
verified, never waved through).
"""

from __future__ import annotations

import asyncio
import atexit
import email
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

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


# The sign-in the secure sink accepts (and nothing else).
SINK_LOGIN = ("office-mailer", "sink-password-1")


class _Tls:
    """A throwaway CA and a server certificate for 127.0.0.1, made once per test process."""

    _made: tuple[ssl.SSLContext, str] | None = None

    @classmethod
    def get(cls) -> tuple[ssl.SSLContext, str]:
        """(the server's SSL context, the path of the CA's PEM file for the client)."""
        if cls._made is None:
            ca = trustme.CA()
            server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
            fd, path = tempfile.mkstemp(prefix="sink-ca-", suffix=".pem")
            os.close(fd)
            ca.cert_pem.write_to_path(path)
            atexit.register(os.unlink, path)
            cls._made = (server, path)
        return cls._made


def secure_settings() -> dict:
    """The settings for the secure sink: STARTTLS, its CA, and the sign-in."""
    return {"smtp_starttls": True, "smtp_ca_file": _Tls.get()[1],
            "smtp_username": SINK_LOGIN[0], "smtp_password": SINK_LOGIN[1]}  # fmt: skip


@dataclass
class SinkHandler:
    # address -> responses to RCPT TO, used up one per attempt ("550 ..." or "451 ...").
    # An address mapped to a string (not a list) is answered that way every time.
    rcpt_codes: dict[str, list[str] | str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    sessions: list[tuple] = field(default_factory=list)  # peers that said EHLO/HELO
    refused: list[tuple[str, str]] = field(default_factory=list)  # (address, response)
    # Addresses whose DATA is taken in and then the line is cut, before any answer: the message
    # arrived, but the sender cannot know it.
    hang_up_in_data: set[str] = field(default_factory=set)
    # address -> the answer to its content ("554 ...", "421 ..." and hang up), the message not kept.
    data_answers: dict[str, str] = field(default_factory=dict)
    # Addresses whose DATA is taken in and then answered with a line that is no SMTP answer.
    garble_data_answer: set[str] = field(default_factory=set)
    data_delay: float = 0.0  # seconds before answering DATA (a slow server); arrival is stamped first
    transactions: list[float] = field(default_factory=list)  # time.monotonic() of every MAIL FROM
    # Set: the next MAIL FROM, on whichever session, is answered with this ("421 ...") and the line
    # closed; "" closes it without a word. As a server that gave up on an idle session does.
    at_next_mail: str | None = None
    quits: list[tuple] = field(default_factory=list)  # peers that said QUIT
    auth_answer: str | None = None  # set ("454 ..."): every sign-in is refused with this answer
    logins: list[tuple] = field(default_factory=list)  # peers that signed in
    ehlo_delay: float = 0.0  # seconds before answering EHLO (a server slow to open a session)
    pipelining: bool = True  # offered in the EHLO answer (aiosmtpd reads pipelined commands either way)
    rcpt_delay: float = 0.0  # seconds before answering each RCPT TO
    split_answers: bool = False  # every answer written in two parts, the code cut, a moment apart
    reads: list[tuple[tuple, bytes]] = field(default_factory=list)  # (peer, bytes) of every read, in order
    lock: threading.Lock = field(default_factory=threading.Lock)
    loop: asyncio.AbstractEventLoop | None = None  # the server's (set by smtp_sink)
    _open: dict[tuple, object] = field(default_factory=dict)  # peer -> its aiosmtpd SMTP, while open

    def _seen(self, server, session) -> None:
        with self.lock:
            if session.peer not in self.sessions:
                self.sessions.append(session.peer)
            self._open[session.peer] = server

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self._seen(server, session)
        if self.ehlo_delay:
            await asyncio.sleep(self.ehlo_delay)
        if self.pipelining:
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):
        session.host_name = hostname
        self._seen(server, session)
        return f"250 {server.hostname}"

    async def handle_QUIT(self, server, session, envelope):
        with self.lock:
            self.quits.append(session.peer)
            self._open.pop(session.peer, None)
        return "221 Bye"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == tuple(
            x.encode() for x in SINK_LOGIN
        )
        if self.auth_answer:
            return AuthResult(success=False, handled=False, message=self.auth_answer)
        if ok:
            with self.lock:
                self.logins.append(session.peer)
        return AuthResult(success=ok, handled=False)  # not handled: the server answers 235 or 535

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.lock:
            drop, self.at_next_mail = self.at_next_mail, None
            if drop is None:
                self.transactions.append(time.monotonic())
        if drop is not None:
            if drop:
                server.transport.write(drop.encode() + b"\r\n")
            server.transport.close()
            await asyncio.sleep(0)
            return drop or "421 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
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
        refusal = next((self.data_answers[a] for a in envelope.rcpt_tos if a in self.data_answers), None)
        if refusal:
            with self.lock:
                self.refused.append((envelope.rcpt_tos[0], refusal))
            if refusal.startswith("421"):  # say so, then hang up
                asyncio.get_running_loop().call_soon(server.transport.close)
            return refusal
        with self.lock:
            self.received.append(
                Received(
                    time.monotonic(), session.peer, envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)
                )
            )
            cut = bool(self.hang_up_in_data & set(envelope.rcpt_tos))
            garbled = bool(self.garble_data_answer & set(envelope.rcpt_tos))
        if garbled:
            return "OK, got it"
        if cut:
            server.transport.close()
            await asyncio.sleep(0)
        elif self.data_delay:
            await asyncio.sleep(self.data_delay)
        return "250 OK"

    # -- for the tests ------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self.sessions)

    def hang_up(self, reply: str = "421 4.4.2 Idle too long, closing connection") -> int:
        """Say ``reply`` on every open session and close it, as a server does at its idle timeout.
        Returns how many it closed."""
        with self.lock:
            servers, self._open = list(self._open.values()), {}
        done = threading.Event()
        closed = []

        def close_all() -> None:
            for server in servers:
                if server.transport is not None and not server.transport.is_closing():
                    server.transport.write(reply.encode() + b"\r\n")
                    server.transport.close()
                    closed.append(server)
            done.set()

        assert self.loop is not None
        self.loop.call_soon_threadsafe(close_all)
        done.wait(5)
        return len(closed)

    def outbox_ids(self) -> list[int]:
        with self.lock:
            return [r.outbox_id for r in self.received]

    def reads_from(self, peer: tuple, first: bytes = b"MAIL FROM:") -> list[bytes]:
        """The reads taken from ``peer``, from the first that begins with ``first`` on."""
        with self.lock:
            got = [data for p, data in self.reads if p == peer]
        return got[next((i for i, d in enumerate(got) if d.startswith(first)), len(got)) :]


class _RecordingSMTP(SMTP):
    """aiosmtpd's server, noting every read it takes (after TLS: the plain text)."""

    def data_received(self, data: bytes) -> None:
        handler = self.event_handler
        with handler.lock:
            handler.reads.append((self.session.peer if self.session else None, bytes(data)))
        super().data_received(data)

    async def push(self, status) -> None:  # type: ignore[no-untyped-def]
        if self.event_handler.split_answers and len(status) > 2:
            head, status = status[:2], status[2:]  # "25", then "0 OK\r\n"
            self._writer.write(head.encode("ascii") if isinstance(head, str) else head)
            await self._writer.drain()
            await asyncio.sleep(0.005)
        await super().push(status)


class _Controller(Controller):
    def factory(self):  # type: ignore[no-untyped-def]
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)


@contextmanager
def smtp_sink(port: int | None = None, *, tls: bool = False, **kw) -> Iterator[tuple[SinkHandler, int]]:
    """An aiosmtpd server on 127.0.0.1 (a free port unless given); yields (handler, port).
    ``tls=True``: STARTTLS and sign-in required (see ``secure_settings``)."""
    handler = SinkHandler(**kw)
    port = port or free_port()
    secure = {}
    if tls:
        secure = {"tls_context": _Tls.get()[0], "require_starttls": True,
                  "authenticator": handler.authenticate, "auth_required": True}  # fmt: skip
    controller = _Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10, **secure)
    controller.start()
    handler.loop = controller.loop
    # aiosmtpd warns on every sign-in that a field it sets itself is deprecated; nothing of ours.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    try:
        yield handler, port
    finally:
        controller.stop()


def smtp_messaging(settings: Settings, port: int, **updates) -> Messaging:
    """The real messaging stack (SmtpAdapter) pointed at the sink on ``port``. Fast by
    default (100 e-mails a second) unless a test sets its own rate; one SMTP session at a time
    unless a test asks for a larger pool (on a loaded machine a second one could open now and
    then, and the tests count sessions)."""
    values = {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_from": "office@example.jp",
              "send_rate_per_second": 100.0, "smtp_pool_size": 1} | updates  # fmt: skip
    return Messaging.from_settings(settings.model_copy(update=values))
