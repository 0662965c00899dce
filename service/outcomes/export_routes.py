"""CSV exports: ``GET /api/v1/exports/{placements,follow-ups,crisis-flags}.csv``.

Workers and managers of the office (an admin too, for their own office); the caller's office
only. Streamed in batches (service/outcomes/exports.py); UTF-8 with a BOM for Excel.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from service.accounts.models import Office
from service.contacts import service as contacts
from service.deps import ClockDep, CurrentUser, SessionDep
from service.outcomes import exports
from service.outcomes.exports import ExportKind

router = APIRouter(prefix="/api/v1/exports", tags=["exports"])

AsOf = Annotated[
    date | None, Query(description="retention status as of this day (YYYY-MM-DD); default today, office time zone")
]
From = Annotated[date | None, Query(alias="from", description="first day (YYYY-MM-DD), inclusive")]
To = Annotated[date | None, Query(alias="to", description="last day (YYYY-MM-DD), inclusive")]
Lang = Annotated[Literal["ja", "en"] | None, Query(description="headers and labels: ja or en; default yours")]
_CSV = {200: {"content": {"text/csv": {}}, "description": "CSV, UTF-8 with a BOM"}}


def _stream(request: Request, session, user, clock, kind: ExportKind, *, as_of, date_from, date_to, lang):
    office = session.get(Office, user.office_id)
    day = as_of or contacts.office_today(office, clock)
    language = lang or user.language.value
    exports.check_request(language=language, date_from=date_from, date_to=date_to)
    body = exports.export_csv(
        request.app.state.session_factory,
        kind,
        office_id=office.id,
        as_of=day,
        language=language,
        date_from=date_from,
        date_to=date_to,
    )
    return StreamingResponse(
        body,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{exports.filename(kind, office, day)}"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/placements.csv", response_class=StreamingResponse, responses=_CSV)
def placements_csv(
    request: Request, session: SessionDep, user: CurrentUser, clock: ClockDep,
    as_of: AsOf = None, date_from: From = None, date_to: To = None, lang: Lang = None,
):  # fmt: skip
    """Placements (started between from and to) with their job retention status at 1, 3, 6 and
    12 months as of ``as_of``: retained, not retained, or not yet mature (never counted)."""
    return _stream(request, session, user, clock, ExportKind.placements,
                   as_of=as_of, date_from=date_from, date_to=date_to, lang=lang)  # fmt: skip


@router.get("/follow-ups.csv", response_class=StreamingResponse, responses=_CSV)
def follow_ups_csv(
    request: Request, session: SessionDep, user: CurrentUser, clock: ClockDep,
    date_from: From = None, date_to: To = None, lang: Lang = None,
):  # fmt: skip
    """Follow-ups due between from and to, one row per outcome (or one row with no outcome)."""
    return _stream(request, session, user, clock, ExportKind.follow_ups,
                   as_of=None, date_from=date_from, date_to=date_to, lang=lang)  # fmt: skip


@router.get("/crisis-flags.csv", response_class=StreamingResponse, responses=_CSV)
def crisis_flags_csv(
    request: Request, session: SessionDep, user: CurrentUser, clock: ClockDep,
    date_from: From = None, date_to: To = None, lang: Lang = None,
):  # fmt: skip
    """Crisis flags opened between from and to (office days), with their signals summarised."""
    return _stream(request, session, user, clock, ExportKind.crisis_flags,
                   as_of=None, date_from=date_from, date_to=date_to, lang=lang)  # fmt: skip
