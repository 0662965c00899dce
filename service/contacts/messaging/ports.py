"""Ports for the outside world: what the outbox needs from an SMS/call provider and a mail server.

Adapters raise ``PermanentError`` (never retry: the address is wrong or refuses us),
``TransientError`` (try again later) or ``MaybeSent`` (we cannot tell whether the provider
accepted it: the message becomes "unknown" and is never re-sent blindly).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

log = logging.getLogger(__name__)


class SendError(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason  # plain words, shown to the worker


class PermanentError(SendError):
    pass


class TransientError(SendError):
    pass


class MaybeSent(SendError):
    pass


class NotTried(TransientError):
    """Never handed to the provider (the batch stopped before it): retried later, and not counted
    as an attempt, so a server that keeps closing the line cannot use up a message's attempts."""


# What is handed to an adapter, and what it answers: immutable named tuples (a dispatch tick
# builds one of each per message; a frozen dataclass costs three times as much to make).


class Email(NamedTuple):
    outbox_id: int
    to: str
    subject: str
    body: str
    html: str | None = None


class Sms(NamedTuple):
    outbox_id: int
    to: str
    body: str


class Call(NamedTuple):
    outbox_id: int
    to: str
    twiml_url: str


class Sent(NamedTuple):
    provider_id: str


class EmailPort(Protocol):
    async def send_batch(self, emails: list[Email]) -> list[Sent | SendError]:
        """Send several e-mails over one connection; one result per e-mail, in order."""
        ...

    async def aclose(self) -> None:
        """Close the connections kept open between batches (at shutdown)."""
        ...


class PhonePort(Protocol):
    async def send_sms(self, sms: Sms) -> Sent: ...

    async def start_call(self, call: Call) -> Sent: ...


@dataclass
class DevelopmentAdapter:
    """Records instead of sending, so the demo runs offline; ``teichaku outbox`` shows them."""

    sent: list[object] = field(default_factory=list)

    async def send_batch(self, emails: list[Email]) -> list[Sent | SendError]:
        self.sent.extend(emails)
        return [Sent(f"dev-email-{e.outbox_id}") for e in emails]

    async def aclose(self) -> None:
        pass

    async def send_sms(self, sms: Sms) -> Sent:
        self.sent.append(sms)
        return Sent(f"dev-sms-{sms.outbox_id}")

    async def start_call(self, call: Call) -> Sent:
        self.sent.append(call)
        return Sent(f"dev-call-{call.outbox_id}")
