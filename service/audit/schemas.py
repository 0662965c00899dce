from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from service.audit.models import ActorType


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    office_id: int | None
    actor_type: ActorType
    actor_id: int | None
    actor_label: str | None
    action: str
    record_type: str
    record_id: int | None
    changes: dict[str, Any] | None
    ip: str | None
    request_id: str | None
