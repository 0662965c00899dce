"""SMS and automated calls through the real ``twilio`` client.

The base URL is configurable (``TEICHAKU_TWILIO_API_BASE_URL``) so tests point the real client at
a mock of Twilio's own OpenAPI description. Twilio's error codes decide retry or not.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

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
    """At most ``rate`` requests per second as Twilio sees them: one request at a time, each
    started at least 1/rate after the previous one ended. (Spacing only the starts is not enough:
    a slow first request arrives late and the next one right behind it.)"""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._free_at = 0.0
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def slot(self):
        async with self._lock:
            delay = self._free_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                yield
            finally:
                self._free_at = time.monotonic() + self.interval


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
        self.pacer = _Pacer(rate_per_second)

    def _from(self) -> dict[str, str]:
        if self.sender.startswith("MG"):
            return {"messaging_service_sid": self.sender}
        return {"from_": self.sender}

    def _callback(self, outbox_id: int) -> str:
        return f"{self.public_url}/webhooks/twilio/status?outbox_id={outbox_id}"

    async def _paced(self, fn) -> Sent:
        async with self.pacer.slot():
            return await asyncio.to_thread(self._call, fn)

    async def send_sms(self, sms: Sms) -> Sent:
        return await self._paced(
            lambda: self.client.messages.create(
                to=sms.to, body=sms.body, status_callback=self._callback(sms.outbox_id), **self._from()
            ),
        )

    async def start_call(self, call: Call) -> Sent:
        sender = self.sender if not self.sender.startswith("MG") else None
        if sender is None:
            raise PermanentError("config", "calls need a phone number as the sender, not a messaging service")
        return await self._paced(
            lambda: self.client.calls.create(
                to=call.to,
                from_=sender,
                url=call.twiml_url,
                status_callback=self._callback(call.outbox_id),
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
