"""The outbox (every outbound message, written before it is sent) and inbound replies."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlmodel import Field, SQLModel

from service.db import StrEnumType, UTCDateTime, partial_index, utcnow


class MessageChannel(enum.StrEnum):
    sms = "sms"
    email = "email"
    voice = "voice"


class MessageStatus(enum.StrEnum):
    queued = "queued"  # written, waiting for its time (quiet hours, backoff)
    sending = "sending"  # claimed by one dispatcher; a crash here ends in "unknown"
    sent = "sent"  # the provider accepted it
    delivered = "delivered"  # the provider says it arrived
    failed = "failed"  # permanently, or out of retries
    unknown = "unknown"  # the provider may have accepted it; never re-sent blindly
    cancelled = "cancelled"  # not sent, with a reason (opted out, too late after an outage)


# A status callback may only move a message forward along this order.
STATUS_RANK = {
    MessageStatus.queued: 0,
    MessageStatus.sending: 1,
    MessageStatus.unknown: 2,
    MessageStatus.sent: 3,
    MessageStatus.delivered: 4,
    MessageStatus.failed: 4,
    MessageStatus.cancelled: 5,
}


class Purpose(enum.StrEnum):
    check_in = "check_in"  # to the client
    employer_check_in = "employer_check_in"  # to the on-site supervisor
    escalation = "escalation"  # the check-in again, by the client's other channel
    reply = "reply"  # an answer to STOP / START / HELP
    digest = "digest"  # the worker's morning e-mail
    alert = "alert"  # an emergency flag, to staff
    program_invitation = "program_invitation"  # a post-employment program session (outcomes/program.py)


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox_message"
    __table_args__ = (
        # Only the rows in flight (migration 0011): a sent row is in neither, so the dispatch
        # tick's two UPDATEs keep one small index each, not a whole-table one twice.
        # The claim's order; queries must spell status = 'queued' out (not a parameter).
        partial_index("ix_outbox_message_due", "next_attempt_at", "id", where="status = 'queued'"),
        partial_index("ix_outbox_message_sending", "claimed_at", where="status = 'sending'"),  # reconcile_stuck
    )

    id: int | None = Field(default=None, primary_key=True)
    # Who and what: "fu:<follow-up>:<attempt>", "digest:<user>:<day>"... sending twice is impossible.
    idempotency_key: str = Field(max_length=120, sa_column_kwargs={"unique": True})
    office_id: int = Field(foreign_key="office.id")  # not indexed (migration 0015): nothing reads by office
    purpose: Purpose = Field(sa_type=StrEnumType(Purpose))
    channel: MessageChannel = Field(sa_type=StrEnumType(MessageChannel))
    follow_up_id: int | None = Field(default=None, foreign_key="follow_up.id", index=True)
    placement_id: int | None = Field(default=None, foreign_key="placement.id", index=True)
    client_id: int | None = Field(default=None, foreign_key="client.id", index=True)
    staff_id: int | None = Field(default=None, foreign_key="staff_user.id")
    to_address: str = Field(max_length=320)
    language: str = Field(default="ja", max_length=5)
    subject: str | None = Field(default=None, max_length=300)
    body: str = Field(max_length=10_000)
    status: MessageStatus = Field(default=MessageStatus.queued, sa_type=StrEnumType(MessageStatus))
    # The recipient's local sending window, fixed when written (None: any hour, e.g. alerts).
    send_tz: str | None = Field(default=None, max_length=64)
    window_start: str | None = Field(default=None, max_length=5)
    window_end: str | None = Field(default=None, max_length=5)
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    claim_token: str | None = Field(default=None, max_length=40)  # rows are found by id, under their token
    # Not indexed (migration 0014): a status callback finds its row by id, then compares this.
    provider_id: str | None = Field(default=None, max_length=200)
    error_code: str | None = Field(default=None, max_length=40)
    error_reason: str | None = Field(default=None, max_length=500)  # plain words, for the worker
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    answered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # reply link used
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class InboundMessage(SQLModel, table=True):
    """An SMS, a keypad answer or a reply-link answer, recorded once per provider id."""

    __tablename__ = "inbound_message"
    __table_args__ = (
        # An SMS kept but not acted on yet (migration 0012): the recovery job's search.
        partial_index("ix_inbound_message_waiting", "received_at", where="processed_at IS NULL"),
        # Put off after a failed try (migration 0016): its sender's later SMS wait behind it.
        partial_index(
            "ix_inbound_message_put_off", "from_address", where="processed_at IS NULL AND next_attempt_at IS NOT NULL"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    # MessageSid / CallSid / "link:<outbox id>": the same one twice is recorded once.
    provider_id: str = Field(max_length=200, sa_column_kwargs={"unique": True})
    office_id: int | None = Field(default=None, foreign_key="office.id", index=True)
    client_id: int | None = Field(default=None, foreign_key="client.id", index=True)
    outbox_id: int | None = Field(default=None, foreign_key="outbox_message.id")
    channel: MessageChannel = Field(sa_type=StrEnumType(MessageChannel))
    from_address: str | None = Field(default=None, max_length=320)
    body: str | None = Field(default=None, max_length=2000)
    reply_class: str | None = Field(default=None, max_length=16)  # none, watch, urgent, emergency
    matched_reason: str | None = Field(default=None, max_length=200)
    command: str | None = Field(default=None, max_length=16)  # stop, start, help
    outcome_id: int | None = Field(default=None, foreign_key="outcome.id")
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # When it was acted on (an answer's outcome, a STOP, ...). An SMS webhook is answered once its
    # row is kept, and acted on right after; one still NULL a while later is the recovery job's.
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Acting on it failed this many times (a fault of ours, not the message); not tried again
    # before ``next_attempt_at`` (migration 0013), so one that keeps failing holds up no other.
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
