"""E-mail over SMTP (aiosmtplib) the way a production mail client sends it: a small pool of
persistent sessions, each opened once (STARTTLS and sign-in included) and reused across batches and
dispatch ticks. A session kept from an earlier batch that the server has meanwhile dropped (closed,
or 421 at its idle timeout) is reopened and the message sent again, but only when the failure came
before DATA (pipelined: before the content), so nothing handed over is ever sent twice; one cut off
after that stays "maybe sent". Idle sessions are closed after a while, and all of them on shutdown
(``aclose``). Messages go out over several sessions at once when one cannot keep up with the send
rate, which is never exceeded however many sessions there are. Every message gets a unique Message-ID.

Where the server offers PIPELINING (RFC 2920; Postfix and most relays do), MAIL FROM, RCPT TO and DATA
go out in one write and their answers are read after: two round trips a message (envelope, then the
content) instead of four. When the next message's turn has come by the time a message's content goes
out (the send rate allows it), the next one's MAIL FROM, RCPT TO and DATA follow the content in the
same write (RFC 2920 allows the content first in a group): one round trip a message. Its answers come
after the content's, so each answer is still paired with its own message; if the line breaks before
the content's answer, the next message was never handed over. A server that does not offer it is
spoken to one command at a time, and so is every server with ``TEICHAKU_SMTP_PIPELINING=false``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING

import aiosmtplib
from aiosmtplib.email import extract_recipients, extract_sender, flatten_message, quote_address
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    MAX_RESPONSE_LENGTH,
    PERIOD_REGEX,
    SMTPProtocol,
    normalize_message_line_endings,
)
from aiosmtplib.response import SMTPResponse

from service.contacts.messaging.ports import (
    Email,
    MaybeSent,
    NotTried,
    PermanentError,
    SendError,
    Sent,
    TransientError,
)

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

_ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError)
_BROKEN = (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError, TimeoutError)
_QUIT_SECONDS = 5.0  # a goodbye should not hold anything up for long


class RateLimiter:
    """At most ``rate`` events per second, spaced evenly (one sender, one process). Each ``wait``
    books the next free slot before it sleeps (no await in between), so waiters are served in
    order and never closer than ``interval`` apart."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0
        self._clock, self._sleep = clock, sleep  # a test's virtual time, else the real one

    async def wait(self) -> None:
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await self._sleep(slot - now)

    def now_or_never(self) -> bool:
        """Books a slot if one is free right now (no waiting); False, and nothing booked, if not."""
        now = self._clock()
        if self._next > now:
            return False
        self._next = now + self.interval
        return True

    def started_late(self) -> None:
        """The event granted by the last ``wait`` happens only now: the next one is spaced from now."""
        self._next = max(self._next, self._clock() + self.interval)


class _FoldedOnce:
    """A header that keeps its folded text for the last policy it was folded with (a header object
    never changes): the sender's, kept by the adapter for every message, took 120 us to fold each
    time with a name in Japanese, the most of a message's flattening."""

    def fold(self, *, policy):  # type: ignore[no-untyped-def]
        kept = self.__dict__.get("_folded")
        if kept is None or kept[0] is not policy:
            kept = self._folded = (policy, super().fold(policy=policy))  # type: ignore[misc]
        return kept[1]


class _HeaderClasses(HeaderRegistry):
    """The standard library's header factory makes a new class (a ``type()`` call) for every header it
    parses, the most of a message's building time; this one makes one per header name and keeps it
    (and its headers keep their folded text: ``_FoldedOnce``). It also keeps the last few hundred
    headers it made, by name and text: a header object never changes, so a message may share one with
    the message before. The sender, the date (to the second), the subject of the day's check-in and
    the MIME headers ``set_content`` writes are then parsed and folded once for a whole batch, not
    once a message (building and flattening a message took twice as long before)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}
        self._kept = functools.lru_cache(maxsize=512)(super().__call__)

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        if (cls := self._made.get(key)) is None:
            made = super().__getitem__(name)
            cls = self._made[key] = type(made.__name__, (_FoldedOnce, made), {})
        return cls

    def __call__(self, name: str, value):  # type: ignore[no-untyped-def]
        # Text is kept; anything else (a list of ``Address`` objects, say) is made each time.
        return self._kept(name, value) if type(value) is str else super().__call__(name, value)


_POLICY = default_policy.clone(header_factory=_HeaderClasses())  # the default policy otherwise


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].strip(">") or "teichaku.local"


class _PipeliningProtocol(SMTPProtocol):
    """aiosmtplib's protocol, able to pipeline. Its own reading pairs one answer with each command
    written and drops whatever arrives while no answer is awaited; inside ``pipelined()`` every byte
    that arrives is kept instead, and ``answer()`` takes the answers from the buffer one by one, in
    order, however the server's writes were cut into reads."""

    _piped = False
    _eof = False
    _arrival: asyncio.Future[None] | None = None
    # Set inside ``pipelined()``: answers are still to come when it ends (the next message's, whose
    # commands went out with this one's content); what arrives is kept for the next ``pipelined()``.
    carry_over = False

    @contextlib.asynccontextmanager
    async def pipelined(self):  # type: ignore[no-untyped-def]
        lock = self._command_lock
        if lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        async with lock:  # no other command in between
            if not self.carry_over:
                del self._buffer[:]  # anything there came unasked (aiosmtplib drops that too)
            self._piped, self.carry_over = True, False
            try:
                yield self
            finally:
                if not self.carry_over:
                    self._piped = False
                    self._arrival = None
                    del self._buffer[:]

    async def answer(self, timeout: float) -> SMTPResponse:
        """The next answer of a pipelined exchange; ``timeout`` seconds at most, however the server
        dribbles it out (SMTPReadTimeoutError then)."""
        assert self._piped
        deadline = self._loop.time() + timeout
        while True:
            response = self._read_response_from_buffer()
            if response is not None:
                return response
            if len(self._buffer) > MAX_RESPONSE_LENGTH:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            if self._eof or self.transport is None or self.transport.is_closing():
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            self._arrival = self._loop.create_future()
            try:
                await asyncio.wait_for(self._arrival, max(0.0, deadline - self._loop.time()))
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc

    def data_received(self, data: bytes) -> None:
        if not self._piped:
            super().data_received(data)
            return
        self._buffer.extend(data)
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._wake()

    def _wake(self) -> None:
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)


class _SMTP(aiosmtplib.SMTP):
    """Notes when the content is begun: a session that breaks before that has handed nothing over.
    Sends a message pipelined where the server offers it (``send``)."""

    data_started = False
    ahead: EmailMessage | None = None  # whose MAIL FROM, RCPT TO and DATA went out, answers unread
    _ahead_envelope: tuple[str, list[str], bytes, bytes] | None = None  # its ``_envelope``, made once

    def close(self) -> None:
        self.ahead = self._ahead_envelope = None
        super().close()

    async def connect(self, *args, **kwargs) -> SMTPResponse:  # type: ignore[no-untyped-def]
        response = await super().connect(*args, **kwargs)
        # The same protocol object (its transport, its TLS), with the pipelined exchange added.
        if type(self.protocol) is SMTPProtocol:
            self.protocol.__class__ = _PipeliningProtocol
            # Some event loops take the protocol's ``data_received`` once, when the connection is made,
            # and call that from then on: uvloop does (uvicorn runs the service on it), and would go on
            # handing every answer to aiosmtplib's own, which drops what arrives while no command of its
            # awaits one; a pipelined exchange then heard nothing until its timeout, every time. Handing
            # the transport its protocol again makes every loop take the methods anew.
            assert self.transport is not None
            self.transport.set_protocol(self.protocol)
        return response

    async def data(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.data_started = True  # aiosmtplib's DATA sends the content as soon as the 354 comes: set before
        return await super().data(*args, **kwargs)

    async def send(
        self, msg: EmailMessage, *, pipelining: bool = True, then: Callable[[], EmailMessage | None] | None = None
    ) -> None:
        """``send_message``, pipelined where the server offers it; the same errors either way.
        Pipelined, ``then`` is asked for the next message as the content goes out (see ``_send_pipelined``)."""
        await self._ehlo_or_helo_if_needed()
        if pipelining and self.supports_extension("pipelining") and isinstance(self.protocol, _PipeliningProtocol):
            await self._send_pipelined(msg, then)
        elif self.ahead is not None:  # never so: what went ahead was pipelined
            raise aiosmtplib.SMTPServerDisconnected("out of step with the server")
        else:
            await self.send_message(msg)

    def _envelope(self, msg: EmailMessage) -> tuple[str, list[str], bytes, bytes]:
        """What ``send_message`` and ``sendmail`` make of ``msg``: the sender, the recipients, the
        MAIL FROM and RCPT TO lines (one per recipient, in order), and the content as DATA sends it."""
        sender, recipients = extract_sender(msg), extract_recipients(msg)
        if sender is None:
            raise ValueError("No From header provided in message")
        if not recipients:
            raise ValueError("No recipient headers provided in message")
        options: list[str] = []
        utf8 = not (sender + "".join(recipients)).isascii()
        if utf8:
            if not self.supports_extension("smtputf8"):
                raise aiosmtplib.SMTPNotSupported("An address is not ASCII, and the server has no SMTPUTF8")
            options.append("SMTPUTF8")
        cte_type = "7bit"
        if self.supports_extension("8BITMIME"):
            options.append("BODY=8BITMIME")
            cte_type = "8bit"
        content = normalize_message_line_endings(flatten_message(msg, utf8=utf8, cte_type=cte_type))
        if self.supports_extension("size"):
            options.insert(0, f"size={len(content)}")
        encoding = "utf-8" if utf8 else "ascii"

        def line(*args: bytes) -> bytes:
            if any(COMMAND_INJECTION_REGEX.search(arg) for arg in args):
                raise ValueError("Command arg contains a prohibited control character")
            return b" ".join(args) + b"\r\n"

        mail_options = (o.encode("ascii") for o in options)
        commands = line(b"MAIL", b"FROM:" + quote_address(sender).encode(encoding), *mail_options)
        commands += b"".join(line(b"RCPT", b"TO:" + quote_address(r).encode(encoding)) for r in recipients)
        return sender, recipients, commands, PERIOD_REGEX.sub(b"..", content) + b".\r\n"

    async def _send_pipelined(
        self, msg: EmailMessage, then: Callable[[], EmailMessage | None] | None = None
    ) -> dict[str, SMTPResponse]:
        """MAIL FROM, RCPT TO and DATA in one write, then their answers; the content only after
        DATA's 354, so a session that breaks before that has handed nothing over. Raises what
        ``sendmail`` raises (SMTPSenderRefused, SMTPRecipientsRefused, SMTPDataError; the line's
        errors) and resets the envelope (RSET) after a refusal as it does; returns the recipients
        refused when others were taken, as it does.

        As the content goes out, ``then()`` may give the next message: its MAIL FROM, RCPT TO and DATA
        follow the content in the same write (``ahead``), and the next call, for that message, reads
        their answers instead of writing them. Nothing of the next message's content goes out before
        its own 354, and the content's answer is read before the next message's: a line that breaks
        before then has handed the next message nothing."""
        protocol = self.protocol
        if not isinstance(protocol, _PipeliningProtocol):
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        written = self.ahead is msg  # its commands went out with the last message's content
        if self.ahead is not None and not written:  # never so: the caller sends what went ahead next
            self.close()
            raise aiosmtplib.SMTPServerDisconnected("out of step with the server")
        # Flattened once: when its commands went ahead, its content was made then.
        made = self._ahead_envelope if written else None
        sender, recipients, envelope, content = made or self._envelope(msg)
        self.ahead = self._ahead_envelope = None
        timeout = self.timeout
        if timeout is None:  # never so from the adapter: every read has an end
            raise ValueError("a pipelined exchange needs a timeout")
        answers: list[SMTPResponse] = []
        try:
            async with protocol.pipelined():
                if not written:
                    protocol.write(envelope + b"DATA\r\n")
                broken: Exception | None = None
                try:
                    while len(answers) < len(recipients) + 2:  # MAIL FROM's, each RCPT TO's, DATA's
                        answers.append(await protocol.answer(timeout))
                except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError) as exc:
                    broken = exc
                refusal, refused = _refusal(sender, recipients, answers)
                if broken is not None:
                    self.close()
                    raise refusal or broken  # a refusal answered before the line went still stands
                data = answers[-1]
                if refusal is None and data.code != 354:
                    refusal = aiosmtplib.SMTPDataError(data.code, data.message)
                if refusal is None:
                    ahead = self._ahead_of(then)  # before the content counts as gone: nothing of ours fails after
                    self.data_started = True
                    protocol.write(content + ahead)
                    answers.append(done := await protocol.answer(timeout))
                    if done.code != 250:
                        refusal = aiosmtplib.SMTPDataError(done.code, done.message)
                    # The next message's answers are still to come: kept for its own exchange.
                    protocol.carry_over = self.ahead is not None and done.code != 421
                elif data.code == 354:  # DATA taken although nothing can be delivered: end it, empty
                    protocol.write(b".\r\n")
                    answers.append(await protocol.answer(timeout))
        except BaseException:
            self.close()  # the line is gone, or out of step with the answers: of no further use
            raise
        if any(a.code == 421 for a in answers):  # "closing the channel": as execute_command does
            self.close()
        if refusal is not None:
            if self.ahead is None:  # else the content's answer ended the transaction, the next one begun
                with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
                    await self.rset()
            raise refusal
        return refused

    def _ahead_of(self, then: Callable[[], EmailMessage | None] | None) -> bytes:
        """The next message's MAIL FROM, RCPT TO and DATA, when ``then`` gives one (``ahead``); else b""."""
        nxt = then() if then is not None else None
        if nxt is None:
            return b""
        try:
            made = self._envelope(nxt)
        except Exception:  # it fails on its own turn (attributed to it), as it would unchained
            return b""
        self.ahead, self._ahead_envelope = nxt, made
        return made[2] + b"DATA\r\n"


def _refusal(
    sender: str, recipients: list[str], answers: list[SMTPResponse]
) -> tuple[aiosmtplib.SMTPException | None, dict[str, SMTPResponse]]:
    """What ``sendmail`` raises for these answers to MAIL FROM and RCPT TO (as many as came), and
    the recipients refused."""
    if answers and answers[0].code != 250:
        return aiosmtplib.SMTPSenderRefused(answers[0].code, answers[0].message, sender), {}
    got = zip(recipients, answers[1 : 1 + len(recipients)], strict=False)
    refused = [aiosmtplib.SMTPRecipientRefused(a.code, a.message, r) for r, a in got if a.code not in (250, 251)]
    if len(refused) == len(recipients):
        return aiosmtplib.SMTPRecipientsRefused(refused), {}
    return None, {e.recipient: SMTPResponse(e.code, e.message) for e in refused}


@dataclass(eq=False)
class _Session:
    smtp: _SMTP
    last_used: float  # time.monotonic()
    proven: bool = True  # has worked in this batch (False: kept from an earlier one, not yet used)


@dataclass(eq=False)
class _Batch:
    """One ``send_batch``: the sessions it holds, and whether it must stop handing messages over."""

    pending: deque[tuple[int, Email]]  # not handed to a session yet, with their places in the batch
    ready: list[_Session] = field(default_factory=list)  # checked or used in this batch, not busy
    busy: int = 0
    opening: bool = False  # another session is being opened beside the ones in use
    halt: SendError | None = None  # set: nothing more goes to the server in this batch
    can_grow: bool = True
    released: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)


class SmtpAdapter:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 15.0,
        rate_per_second: float = 10.0,
        pool_size: int = 4,
        idle_seconds: float = 60.0,
        ca_file: str | None = None,
        pipelining: bool = True,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        # PIPELINING where the server offers it (TEICHAKU_SMTP_PIPELINING=false: one command at a time).
        self.pipelining = pipelining
        self.username, self.password = username, password
        self.starttls, self.timeout = starttls, timeout
        self.limiter = RateLimiter(rate_per_second)
        self.pool_size, self.idle_seconds = max(1, pool_size), idle_seconds
        # The server's certificate is always verified: against these CAs when given, else the system's.
        self.tls_context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.connections = 0  # how many SMTP sessions were opened (for tests and benchmarks)
        self._idle: list[_Session] = []  # open and not in use, the most recently used last
        self._open = 0  # open sessions, idle, in use or being opened
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reaper: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpAdapter:
        assert settings.smtp_host
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            timeout=settings.smtp_timeout_seconds,
            rate_per_second=settings.send_rate_per_second,
            pool_size=settings.smtp_pool_size,
            idle_seconds=settings.smtp_idle_seconds,
            ca_file=settings.smtp_ca_file,
            pipelining=settings.smtp_pipelining,
        )

    @property
    def idle_sessions(self) -> int:
        """Sessions kept open for the next batch."""
        return len(self._idle)

    def _message(self, e: Email) -> EmailMessage:
        msg = EmailMessage(policy=_POLICY)
        msg["From"] = self.sender
        msg["To"] = e.to
        msg["Subject"] = e.subject
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(idstring=f"outbox{e.outbox_id}", domain=_domain(self.sender))
        msg["X-Teichaku-Outbox"] = str(e.outbox_id)
        msg.set_content(e.body)
        if e.html:
            msg.add_alternative(e.html, subtype="html")
        return msg

    # -- sending ----------------------------------------------------------------------------

    async def send_batch(self, emails: list[Email]) -> list[Sent | SendError]:
        if not emails:
            return []
        loop = self._own_loop()
        results: list[Sent | SendError | None] = [None] * len(emails)
        b = _Batch(deque(enumerate(emails)))
        try:
            while b.pending:
                if not b.ready and not b.busy:  # nothing in hand (the first message): a session first
                    session = await self._acquire(b)
                    if session is None:
                        break
                    await self.limiter.wait()
                else:
                    await self.limiter.wait()  # the moment this message may start
                    session = self._take_ready(b)
                    if session is None:  # none free now: check or open one, or wait for one in use
                        session = await self._acquire(b)
                        if session is None:
                            break
                        self.limiter.started_late()
                if b.halt is not None or not b.pending:  # halted; or the rest went with the content before
                    b.ready.append(session)
                    break
                i, e = b.pending.popleft()
                b.busy += 1
                b.tasks.append(asyncio.create_task(self._send_one(b, session, e, results, i)))
        finally:
            if b.tasks:
                await asyncio.gather(*b.tasks, return_exceptions=True)
            self._idle.extend(sorted(b.ready, key=lambda s: s.last_used))
            self._schedule_reaper(loop)
        rest = b.halt or TransientError("halted", "the mail server took no more for now")
        if not isinstance(rest, PermanentError):  # the rest was never handed over: not an attempt
            rest = NotTried(rest.code, rest.reason)
        return [r if r is not None else rest for r in results]

    async def _send_one(
        self, b: _Batch, first: _Session, e: Email, results: list[Sent | SendError | None], i: int
    ) -> None:
        session: _Session | None = first
        good = False
        chained: list[tuple[int, EmailMessage]] = []  # whose commands went out with a content (at most one)

        def then() -> EmailMessage | None:
            """The next message, when its turn has come already: its commands go with this one's content."""
            if b.halt is not None or not b.pending or not self.limiter.now_or_never():
                return None
            j, nxt = b.pending[0]
            try:
                m = self._message(nxt)
            except Exception:  # it fails on its own turn (the main loop's), attributed to it
                return None
            b.pending.popleft()
            chained.append((j, m))
            return m

        try:
            msg = self._message(e)
            result, good = await self._attempt(first, msg, then)
            if not good and not first.proven and not first.smtp.data_started:
                # Kept from an earlier batch, and the server had given up on it (closed it, or 421 at
                # its idle timeout) before anything was handed over: once more, on a new session.
                session = None
                await self._close(first)
                try:
                    session = await self._connect()
                except _ERRORS as exc:
                    result = _connect_error(exc)
                else:
                    await self.limiter.wait()
                    result, good = await self._attempt(session, msg, then)
            results[i] = result
            self._settle(b, session, result, good)
            # A message whose commands went with the last content: its answers come next. One left
            # when the session failed was never handed over: it is with the batch's rest.
            while good and chained and session is not None:
                i, msg = chained.pop()
                result, good = await self._attempt(session, msg, then)
                results[i] = result
                self._settle(b, session, result, good)
        except Exception as exc:  # an unexpected failure must not lose the batch's other results
            log.exception("e-mail send failed")
            results[i] = MaybeSent("adapter", f"the mail adapter failed ({type(exc).__name__})")
            good = False
        finally:
            b.busy -= 1
            if session is not None:
                if good and session.smtp.is_connected:
                    session.last_used = time.monotonic()
                    b.ready.append(session)
                else:
                    await self._close(session)
            b.released.set()

    @staticmethod
    def _settle(b: _Batch, session: _Session | None, result: Sent | SendError, good: bool) -> None:
        if good and session is not None:
            session.proven = True
        elif result.code == "421":  # "closing the channel" (RFC 5321): back off, nothing more now
            b.halt = b.halt or TransientError("421", "the mail server closed the connection")
        elif result.code == "connect" or isinstance(result, PermanentError | NotTried):  # could not reopen
            b.halt = b.halt or result
        else:  # the connection broke: what was not handed over yet waits for the next dispatch
            b.halt = b.halt or TransientError("disconnected", "the mail server connection broke")

    async def _attempt(
        self, session: _Session, msg: EmailMessage, then: Callable[[], EmailMessage | None] | None = None
    ) -> tuple[Sent | SendError, bool]:
        """One try over ``session``: its result, and whether the session can go on."""
        session.smtp.data_started = False
        try:
            await session.smtp.send(msg, pipelining=self.pipelining, then=then)
            return Sent(msg["Message-ID"]), True
        except aiosmtplib.SMTPRecipientsRefused as exc:
            code = min((r.code for r in exc.recipients), default=550)
            return _by_code(code, "the address was refused by the mail server"), code != 421
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code < 0:  # no SMTP answer (aiosmtplib's -1): the line is out of step, of no more use
                session.smtp.close()
                if session.smtp.data_started:  # the content went over: it may have been taken
                    return MaybeSent("unreadable", "the mail server's answer to the message was unreadable"), False
                return TransientError("unreadable", "the mail server's answer was unreadable"), False
            return _by_code(exc.code, "the mail server refused the message"), exc.code != 421
        except _BROKEN:
            if session.smtp.data_started:  # cut off mid-message: it may have been accepted
                return MaybeSent("disconnected", "the connection broke while sending"), False
            return TransientError("disconnected", "the mail server connection broke"), False

    def _take_ready(self, b: _Batch) -> _Session | None:
        while b.ready:
            session = b.ready.pop()
            if session.smtp.is_connected:
                return session
            self._abandon(session)  # the server hung up between two messages: reopen quietly
        return None

    async def _acquire(self, b: _Batch) -> _Session | None:
        """A session for the next message: one in hand, one left open by an earlier batch, a new one
        while the pool has room (opened beside the sends in progress), else the next one a send gives
        back. None when the batch must stop (``b.halt`` says why)."""
        waited = False
        while b.halt is None:
            b.released.clear()  # first: a session given back from here on wakes the wait below
            if session := self._take_ready(b):
                return session
            while self._idle:
                session = self._idle.pop()
                if session.smtp.is_connected and time.monotonic() - session.last_used < self.idle_seconds:
                    session.proven = False
                    return session
                await self._close(session)  # closed by the server, or past its idle time
            if not b.busy and not b.opening:  # nothing in hand: open one and wait for it
                try:
                    return await self._connect()
                except _ERRORS as exc:
                    b.halt = _connect_error(exc)
                    return None
            if b.can_grow and not b.opening and self._open < self.pool_size:
                if waited:  # the sends in progress are slower than the rate: one more session
                    b.opening = True
                    b.tasks.append(asyncio.create_task(self._open_beside(b)))
                else:  # one may be about to finish: give it a slot before opening another
                    waited = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(b.released.wait(), self.limiter.interval)
                    continue
            await b.released.wait()
        return None

    async def _open_beside(self, b: _Batch) -> None:
        """Open another session while the others send; it joins the batch's sessions in hand."""
        try:
            b.ready.append(await self._connect())
        except _ERRORS as exc:
            b.can_grow = False  # carry on over the sessions in use
            log.warning("another SMTP session could not be opened: %s", type(exc).__name__)
            if not b.busy and not b.ready:
                b.halt = _connect_error(exc)
        finally:
            b.opening = False
            b.released.set()

    async def _connect(self) -> _Session:
        smtp = _SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            # Required when configured (refuse to send in clear), never attempted otherwise.
            start_tls=bool(self.starttls),
            tls_context=self.tls_context,
        )
        self._open += 1  # counted while it opens: no other is opened beside it meanwhile beyond the pool's size
        try:
            await smtp.connect()
            self.connections += 1
            if self.username:
                await smtp.login(self.username, self.password or "")
        except BaseException:
            self._open -= 1
            smtp.close()
            raise
        return _Session(smtp, time.monotonic())

    async def _close(self, session: _Session) -> None:
        self._open -= 1
        if not session.smtp.is_connected or session.smtp.ahead is not None:  # gone, or answers unread
            session.smtp.close()
            return
        try:
            await session.smtp.quit(timeout=min(self.timeout, _QUIT_SECONDS))
        except _ERRORS:
            session.smtp.close()

    def _abandon(self, session: _Session) -> None:
        self._open -= 1
        with contextlib.suppress(RuntimeError):  # its event loop is gone; the socket goes with it
            session.smtp.close()

    # -- the pool over time ----------------------------------------------------------------------

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # sessions of an event loop that has ended are of no use here
            if self._reaper is not None:
                self._reaper.cancel()
                self._reaper = None
            for session in self._idle:
                self._abandon(session)
            self._idle.clear()
            self._open = 0
            self._loop = loop
        return loop

    def _schedule_reaper(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._reaper is None and self._idle:
            oldest = min(s.last_used for s in self._idle)
            self._reaper = loop.call_later(max(0.0, oldest + self.idle_seconds - time.monotonic()), self._reap)

    def _reap(self) -> None:
        """Close the sessions idle for ``idle_seconds`` (servers drop them anyway, often without a word)."""
        self._reaper = None
        cutoff = time.monotonic() - self.idle_seconds + 0.01
        expired = [s for s in self._idle if s.last_used <= cutoff]
        self._idle = [s for s in self._idle if s.last_used > cutoff]
        for session in expired:
            task = asyncio.get_running_loop().create_task(self._close(session))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if self._loop is not None:
            self._schedule_reaper(self._loop)

    async def aclose(self) -> None:
        """Close every idle session (QUIT); the adapter stays usable and opens new ones when needed."""
        if self._loop is not asyncio.get_running_loop():
            self._own_loop()  # another loop's sessions: dropped without a word
            return
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._close(s) for s in idle), *self._closing, return_exceptions=True)


def _connect_error(exc: BaseException) -> SendError:
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        if 400 <= exc.code < 500:  # 454 and the like: a sign-in that may work later
            return TransientError(str(exc.code), "the mail server could not sign us in for now")
        # 535 and the like: our user name or password is wrong, or the account may not send. No e-mail
        # is at fault and none can go until someone fixes the account: they stay queued (not an
        # attempt, so none fails for good and becomes a worker's phone call), and the log says why.
        log.error(
            "the mail server refused our sign-in (%s): check TEICHAKU_SMTP_USERNAME and TEICHAKU_SMTP_PASSWORD;"
            " e-mails stay queued until it succeeds",
            exc.code,
        )
        return NotTried(str(exc.code), "the mail server refused our sign-in")
    return TransientError("connect", f"the mail server could not be reached ({type(exc).__name__})")


def _by_code(code: int, reason: str) -> SendError:
    if 500 <= code < 600:
        return PermanentError(str(code), reason)
    return TransientError(str(code), reason + " for now")
