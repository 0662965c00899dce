"""E-mail over SMTP (aiosmtplib) the way a production mail client sends it: a small pool of
persistent sessions, each opened once (STARTTLS and sign-in included) and reused across batches and
dispatch ticks. A session kept from an earlier batch that the server has meanwhile dropped (closed,
or 421 at its idle timeout) is reopened and the message sent again, but only when the failure came
before DATA, so nothing handed over is ever sent twice; one cut off after DATA began stays "maybe
sent". Idle sessions are closed after a while, and all of them on shutdown (``aclose``). Messages go
out over several sessions at once when one cannot keep up with the send rate, which is never
exceeded however many sessions there are. Every message gets a unique Message-ID."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING

import aiosmtplib

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

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)

    def started_late(self) -> None:
        """The event granted by the last ``wait`` happens only now: the next one is spaced from now."""
        self._next = max(self._next, time.monotonic() + self.interval)


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].strip(">") or "teichaku.local"


class _SMTP(aiosmtplib.SMTP):
    """Notes when DATA is begun: a session that breaks before that has handed nothing over."""

    data_started = False

    async def data(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.data_started = True
        return await super().data(*args, **kwargs)


@dataclass(eq=False)
class _Session:
    smtp: _SMTP
    last_used: float  # time.monotonic()
    proven: bool = True  # has worked in this batch (False: kept from an earlier one, not yet used)


@dataclass(eq=False)
class _Batch:
    """One ``send_batch``: the sessions it holds, and whether it must stop handing messages over."""

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
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.username, self.password = username, password
        self.starttls, self.timeout = starttls, timeout
        self.limiter = RateLimiter(rate_per_second)
        self.pool_size, self.idle_seconds = max(1, pool_size), idle_seconds
        # The server's certificate is always verified: against these CAs when given, else the system's.
        self.tls_context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.connections = 0  # how many SMTP sessions were opened (for tests and benchmarks)
        self._idle: list[_Session] = []  # open and not in use, the most recently used last
        self._open = 0  # open sessions, idle or in use
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
        )

    @property
    def idle_sessions(self) -> int:
        """Sessions kept open for the next batch."""
        return len(self._idle)

    def _message(self, e: Email) -> EmailMessage:
        msg = EmailMessage()
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
        b = _Batch()
        try:
            for i, e in enumerate(emails):
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
                if b.halt is not None:
                    b.ready.append(session)
                    break
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
        try:
            msg = self._message(e)
            result, good = await self._attempt(first, msg)
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
                    result, good = await self._attempt(session, msg)
            results[i] = result
            if good and session is not None:
                session.proven = True
            elif result.code == "421":  # "closing the channel" (RFC 5321): back off, nothing more now
                b.halt = b.halt or TransientError("421", "the mail server closed the connection")
            elif result.code == "connect" or isinstance(result, PermanentError):  # could not reopen
                b.halt = b.halt or result
            else:  # the connection broke: what was not handed over yet waits for the next dispatch
                b.halt = b.halt or TransientError("disconnected", "the mail server connection broke")
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

    async def _attempt(self, session: _Session, msg: EmailMessage) -> tuple[Sent | SendError, bool]:
        """One try over ``session``: its result, and whether the session can go on."""
        session.smtp.data_started = False
        try:
            await session.smtp.send_message(msg)
            return Sent(msg["Message-ID"]), True
        except aiosmtplib.SMTPRecipientsRefused as exc:
            code = min((r.code for r in exc.recipients), default=550)
            return _by_code(code, "the address was refused by the mail server"), code != 421
        except aiosmtplib.SMTPResponseException as exc:
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
        try:
            await smtp.connect()
            self.connections += 1
            if self.username:
                await smtp.login(self.username, self.password or "")
        except BaseException:
            smtp.close()
            raise
        self._open += 1
        return _Session(smtp, time.monotonic())

    async def _close(self, session: _Session) -> None:
        self._open -= 1
        if not session.smtp.is_connected:
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
        return PermanentError(str(exc.code), "the mail server refused our sign-in")
    return TransientError("connect", f"the mail server could not be reached ({type(exc).__name__})")


def _by_code(code: int, reason: str) -> SendError:
    if 500 <= code < 600:
        return PermanentError(str(code), reason)
    return TransientError(str(code), reason + " for now")
