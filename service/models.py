"""Every table, imported in one place so metadata (and Alembic) sees them all."""

from sqlmodel import SQLModel

from service.accounts.models import Office, SignInFailure, StaffUser
from service.audit import capture as _audit_capture  # noqa: F401  (installs the audit hooks)
from service.audit.models import AuditEvent
from service.contacts.messaging.models import InboundMessage, OutboxMessage
from service.contacts.models import Client, Employer, FamilyContact, FollowUp, Placement, Separation
from service.outcomes.models import CrisisAlert, CrisisFlag, CrisisSignal, Outcome
from service.outcomes.program import ProgramInvitation, ProgramSession
from service.web.models import CalendarFeed, WebSession

metadata = SQLModel.metadata

__all__ = [
    "AuditEvent",
    "CalendarFeed",
    "WebSession",
    "SignInFailure",
    "InboundMessage",
    "OutboxMessage",
    "Client",
    "CrisisAlert",
    "CrisisFlag",
    "CrisisSignal",
    "Employer",
    "FamilyContact",
    "FollowUp",
    "Office",
    "Outcome",
    "Placement",
    "ProgramInvitation",
    "ProgramSession",
    "Separation",
    "StaffUser",
    "metadata",
]
