"""E-mail over SMTP (aiosmtplib): one connection per batch, STARTTLS when configured, a send
rate that is never exceeded, and a unique Message-ID on every message."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from service.contacts.messaging.ports import (
    Email,
    MaybeSent,
    PermanentError,
    SendError,
    Sent,
    TransientError,
)


class RateLimiter:
    """At most ``rate`` events per second, spaced evenly (one sender, one process)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._next > now:
                await asyncio.sleep(self._next - now)
                now = time.monotonic()
            self._next = max(now, self._next) + self.interval


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].strip(">") or "teichaku.local"


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
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.username, self.password = username, password
        self.starttls, self.timeout = starttls, timeout
        self.limiter = RateLimiter(rate_per_second)
        self.connections = 0  # how many SMTP sessions were opened (for tests and benchmarks)

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

    async def send_batch(self, emails: list[Email]) -> list[Sent | SendError]:
        if not emails:
            return []
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self.timeout,
            # Required when configured (refuse to send in clear), never attempted otherwise.
            start_tls=bool(self.starttls),
        )
        try:
            await smtp.connect()
            self.connections += 1
            if self.username:
                await smtp.login(self.username, self.password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            return [PermanentError(str(exc.code), "the mail server refused our sign-in")] * len(emails)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            err = TransientError("connect", f"the mail server could not be reached ({type(exc).__name__})")
            return [err] * len(emails)
        results: list[Sent | SendError] = []
        try:
            for i, e in enumerate(emails):
                if not smtp.is_connected:  # the server ended the session: the rest were never tried
                    rest = TransientError("421", "the mail server closed the connection")
                    results.extend([rest] * (len(emails) - i))
                    break
                await self.limiter.wait()
                msg = self._message(e)
                code = 250
                try:
                    await smtp.send_message(msg)
                    results.append(Sent(msg["Message-ID"]))
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    code = min((r.code for r in exc.recipients), default=550)
                    results.append(_by_code(code, "the address was refused by the mail server"))
                except aiosmtplib.SMTPResponseException as exc:
                    code = exc.code
                    results.append(_by_code(exc.code, "the mail server refused the message"))
                except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError, TimeoutError):
                    # Cut off mid-message: it may have been accepted. The rest was never tried.
                    results.append(MaybeSent("disconnected", "the connection broke while sending"))
                    rest = TransientError("disconnected", "the mail server connection broke")
                    results.extend([rest] * (len(emails) - i - 1))
                    break
                if code == 421:  # "closing the channel" (RFC 5321): nothing more goes on this one
                    rest = TransientError("421", "the mail server closed the connection")
                    results.extend([rest] * (len(emails) - i - 1))
                    break
        finally:
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()
        return results


def _by_code(code: int, reason: str) -> SendError:
    if 500 <= code < 600:
        return PermanentError(str(code), reason)
    return TransientError(str(code), reason + " for now")
