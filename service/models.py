"""Every table, imported in one place so metadata (and Alembic) sees them all."""

from sqlmodel import SQLModel

from service.accounts.models import Office, StaffUser
from service.contacts.messaging.models import InboundMessage, OutboxMessage
from service.contacts.models import Client, Employer, FamilyContact, FollowUp, Placement, Separation
from service.outcomes.models import CrisisAlert, CrisisFlag, CrisisSignal, Outcome

metadata = SQLModel.metadata

__all__ = [
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
    "Separation",
    "StaffUser",
    "metadata",
]
