"""SMS and automated calls through the real ``twilio`` client.

The base URL is configurable (``TEICHAKU_TWILIO_API_BASE_URL``) so tests point the real client at
a mock of Twilio's own OpenAPI description. Twilio's error codes decide retry or not.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

import requests
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from urllib3.exceptions import MaxRetryError, NewConnectionError

from service.contacts.messaging.ports import (
    Call,
    MaybeSent,
    PermanentError,
    Sent,
    Sms,
    TransientError,
)

TWILIO_API = "https://api.twilio.com"
T = TypeVar("T")

# Twilio error codes that no retry can fix, in plain words for the worker.
PERMANENT = {
    21211: "the phone number is not valid",
    21214: "the phone number cannot be reached",
    21408: "SMS to this country is not enabled",
    21610: "the client has blocked messages from us (unsubscribed)",
    21612: "messages cannot be sent to this number",
    21614: "the number is not a mobile phone, so it cannot receive SMS",
    21217: "the phone number is not valid",
}


def _never_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """True when no connection was made (refused, unreachable, unknown host): Twilio cannot have
    the message. A connection that broke after the request went out may have delivered it."""
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)


class _Pacer:
    """One sender's pace: at most one request per ``interval`` as Twilio sees them arrive.

    Why each request starts ``interval`` after the previous one *ended* (not started): we cannot
    know when a request reached Twilio, only that it was somewhere between its start and its end
    (Twilio answered, so it had it). Spacing the starts alone is not enough: a slow first request
    (a new TLS connection) arrives late and the next one right behind it. So one request at a
    time, and the next may start ``interval`` after the previous answer: then its arrival is at
    least ``interval`` after the previous arrival whatever the latency. The cost is one round trip
    per message on top of the interval (milliseconds on loopback, more to Twilio's API across the
    Pacific). Anything tighter has to assume how the latency splits between the two ways.

    Shared by every adapter of the process (Twilio counts per sender, not per client object) and
    safe across event loops and threads (``run_job`` starts a loop per tick): a thread lock marks
    the request in flight; each event loop queues its own waiters in order on an asyncio lock.
    The HTTP request runs in a worker thread, which marks the end itself: a cancelled sender
    (shutdown) cannot free the slot while its request may still be on its way.
    Processes do not share it: two scheduler processes sending from one sender can together
    exceed its rate.
    """

    def __init__(self) -> None:
        self._in_flight = threading.Lock()
        self._free_at = 0.0  # time.monotonic() from which the next request may start
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    async def send(self, interval: float, fn: Callable[[], T]) -> T:
        """Run ``fn`` (blocking: an HTTP request) in a worker thread when this sender's turn comes."""
        loop = asyncio.get_running_loop()
        with _REGISTRY_LOCK:
            for closed in [other for other in self._queues if other.is_closed()]:  # a bound lock holds its loop
                del self._queues[closed]
            queue = self._queues.setdefault(loop, asyncio.Lock())
        async with queue:
            while not self._in_flight.acquire(blocking=False):  # another loop's request is out
                await asyncio.sleep(0.01)
            try:
                while (delay := self._free_at - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                ctx = contextvars.copy_context()
                done = loop.run_in_executor(None, ctx.run, self._run, interval, fn)
            except BaseException:
                self._in_flight.release()
                raise
            return await asyncio.shield(done)  # cancelled or not, the thread finishes and frees the slot

    def _run(self, interval: float, fn: Callable[[], T]) -> T:
        try:
            return fn()
        finally:
            self._free_at = time.monotonic() + interval
            self._in_flight.release()


_PACERS: dict[tuple[str, ...], _Pacer] = {}
_REGISTRY_LOCK = threading.Lock()


def pacer_for(*key: str) -> _Pacer:
    """The process's pacer for one Twilio limit: ``("sms", account, sender)`` or ``("calls", account)``."""
    with _REGISTRY_LOCK:
        return _PACERS.setdefault(key, _Pacer())


class _BaseUrlClient(TwilioHttpClient):
    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/")

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        if url.startswith(TWILIO_API):
            url = self.base_url + url[len(TWILIO_API) :]
        return super().request(method, url, *args, **kwargs)


class TwilioAdapter:
    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        sender: str,
        public_url: str,
        base_url: str = TWILIO_API,
        timeout: float = 15.0,
        rate_per_second: float = 1.0,
    ) -> None:
        self.client = Client(account_sid, auth_token, http_client=_BaseUrlClient(base_url, timeout))
        self.sender = sender
        self.public_url = public_url.rstrip("/")
        self.interval = 1.0 / rate_per_second
        # Twilio's limits: messages per sender (a number, or a messaging service's pool), calls per account.
        self.sms_pacer = pacer_for("sms", account_sid, sender)
        self.call_pacer = pacer_for("calls", account_sid)

    def _from(self) -> dict[str, str]:
        if self.sender.startswith("MG"):
            return {"messaging_service_sid": self.sender}
        return {"from_": self.sender}

    def _callback(self, outbox_id: int) -> str:
        return f"{self.public_url}/webhooks/twilio/status?outbox_id={outbox_id}"

    async def send_sms(self, sms: Sms) -> Sent:
        return await self.sms_pacer.send(
            self.interval,
            lambda: self._call(
                lambda: self.client.messages.create(
                    to=sms.to, body=sms.body, status_callback=self._callback(sms.outbox_id), **self._from()
                )
            ),
        )

    async def start_call(self, call: Call) -> Sent:
        sender = self.sender if not self.sender.startswith("MG") else None
        if sender is None:
            raise PermanentError("config", "calls need a phone number as the sender, not a messaging service")
        return await self.call_pacer.send(
            self.interval,
            lambda: self._call(
                lambda: self.client.calls.create(
                    to=call.to,
                    from_=sender,
                    url=call.twiml_url,
                    status_callback=self._callback(call.outbox_id),
                )
            ),
        )

    @staticmethod
    def _call(fn) -> Sent:
        try:
            resource = fn()
        except (TwilioRestException, TwilioServiceException) as exc:  # legacy and RFC 9457 error bodies
            if exc.code in PERMANENT:
                raise PermanentError(str(exc.code), PERMANENT[exc.code]) from None
            if exc.status in (400, 401, 403, 404) and exc.code not in (20429, 20003):
                raise PermanentError(str(exc.code or exc.status), "Twilio refused the request") from None
            raise TransientError(str(exc.code or exc.status), "Twilio is not available right now") from None
        except requests.exceptions.ConnectTimeout:
            raise TransientError("timeout", "Twilio could not be reached") from None
        except requests.exceptions.ConnectionError as exc:
            if _never_sent(exc):
                raise TransientError("network", "Twilio could not be reached") from None
            raise MaybeSent("network", "the connection to Twilio broke before it answered") from None
        except requests.exceptions.Timeout:
            raise MaybeSent("timeout", "Twilio did not answer in time") from None
        return Sent(resource.sid)
