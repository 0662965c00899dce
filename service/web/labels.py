"""Words for the codes the pages show (party, channel, status, reason...), through the gettext catalog.

Every code printed on a page goes through :func:`label` (the Jinja filter ``label``:
``{{ fu.status|label("follow_up_status") }}``). The English words below are the msgids, each with its
kind as the message context (``msgctxt``), so "other" or "health" can be translated differently in
each list; ``pybabel extract -k NP_:1c,2`` (``make i18n``) picks them up.
"""

from __future__ import annotations

from enum import Enum

from babel.support import NullTranslations


def NP_(context: str, message: str) -> tuple[str, str]:  # noqa: N802  (the marker pybabel extracts: -k NP_:1c,2)
    return context, message


LABELS: dict[str, dict[str, tuple[str, str]]] = {
    "party": {
        "client": NP_("party", "client"),
        "family": NP_("party", "family"),
        "employer": NP_("party", "employer"),
        "system": NP_("party", "system"),
    },
    "channel": {
        "phone": NP_("channel", "phone"),
        "sms": NP_("channel", "SMS"),
        "email": NP_("channel", "e-mail"),
        "voice": NP_("channel", "automated call"),
        "visit": NP_("channel", "visit"),
        "meeting": NP_("channel", "meeting"),
    },
    "kind": {
        "check_in": NP_("kind", "check-in"),
        "three_party_meeting": NP_("kind", "three-party meeting"),
        "employer_visit": NP_("kind", "employer visit"),
        "family_contact": NP_("kind", "family contact"),
        "final_review": NP_("kind", "final review"),
        "separation_call": NP_("kind", "call after separation"),
        "retry": NP_("kind", "retry"),
        "crisis_call": NP_("kind", "crisis call"),
        "missed_session_call": NP_("kind", "call after a missed program session"),
    },
    "follow_up_status": {
        "pending": NP_("follow_up_status", "planned"),
        "done": NP_("follow_up_status", "done"),
        "attempted": NP_("follow_up_status", "tried, not reached"),
        "missed": NP_("follow_up_status", "missed"),
        "cancelled": NP_("follow_up_status", "cancelled"),
        "skipped": NP_("follow_up_status", "skipped"),
    },
    "still_employed": {
        "yes": NP_("still_employed", "yes"),
        "no": NP_("still_employed", "no"),
        "unknown": NP_("still_employed", "not known"),
    },
    "wellbeing": {
        "1": NP_("wellbeing", "1 (very bad)"),
        "2": NP_("wellbeing", "2 (bad)"),
        "3": NP_("wellbeing", "3 (so-so)"),
        "4": NP_("wellbeing", "4 (good)"),
        "5": NP_("wellbeing", "5 (very good)"),
    },
    "risk_signal": {
        "absence": NP_("risk_signal", "absence"),
        "lateness": NP_("risk_signal", "lateness"),
        "conflict": NP_("risk_signal", "conflict at work"),
        "health": NP_("risk_signal", "health"),
        "money": NP_("risk_signal", "money trouble"),
        "housing": NP_("risk_signal", "housing trouble"),
        "isolation": NP_("risk_signal", "isolation"),
        "wants_to_quit": NP_("risk_signal", "wants to quit"),
        "family_trouble": NP_("risk_signal", "family trouble"),
        "other": NP_("risk_signal", "other"),
    },
    "crisis_signal": {
        "unreachable": NP_("crisis_signal", "unreachable"),
        "wellbeing_drop": NP_("crisis_signal", "wellbeing drop"),
        "reply_urgent": NP_("crisis_signal", "reply: urgent"),
        "reply_emergency": NP_("crisis_signal", "reply: emergency"),
        "employer_absence": NP_("crisis_signal", "employer reports absence"),
        "employer_lateness": NP_("crisis_signal", "employer reports lateness"),
        "employer_conflict": NP_("crisis_signal", "employer reports conflict"),
        "discordance": NP_("crisis_signal", "client and employer disagree"),
        "missed_session": NP_("crisis_signal", "missed program session"),
    },
    "separation_reason": {
        "voluntary": NP_("separation_reason", "quit (own decision)"),
        "dismissed": NP_("separation_reason", "dismissed"),
        "contract_ended": NP_("separation_reason", "contract ended"),
        "health": NP_("separation_reason", "health reasons"),
        "other": NP_("separation_reason", "other"),
    },
    "crisis_severity": {
        "watch": NP_("crisis_severity", "watch"),
        "urgent": NP_("crisis_severity", "urgent"),
        "emergency": NP_("crisis_severity", "emergency"),
    },
    "crisis_status": {
        "open": NP_("crisis_status", "open"),
        "acknowledged": NP_("crisis_status", "acknowledged"),
        "resolved": NP_("crisis_status", "resolved"),
    },
    "employment_type": {
        "general": NP_("employment_type", "general employment"),
        "certified_training": NP_("employment_type", "certified training employment"),
        "other": NP_("employment_type", "other"),
    },
    "client_category": {
        "needy_person": NP_("client_category", "needy person"),
        "public_assistance": NP_("client_category", "public-assistance recipient"),
    },
    "message_status": {
        "queued": NP_("message_status", "waiting to be sent"),
        "sending": NP_("message_status", "sending"),
        "sent": NP_("message_status", "sent"),
        "delivered": NP_("message_status", "delivered"),
        "failed": NP_("message_status", "not delivered"),
        "unknown": NP_("message_status", "not known if sent"),
        "cancelled": NP_("message_status", "cancelled"),
    },
    "reply_class": {
        "none": NP_("reply_class", "no concern"),
        "watch": NP_("reply_class", "watch"),
        "urgent": NP_("reply_class", "urgent"),
        "emergency": NP_("reply_class", "emergency"),
    },
    "placement_status": {
        "active": NP_("placement_status", "working"),
        "separated": NP_("placement_status", "separated"),
        "completed": NP_("placement_status", "support completed"),
    },
    "language": {
        "ja": NP_("language", "Japanese"),
        "en": NP_("language", "English"),
    },
}
# A crisis flag's signals are an outcome's risk signals plus the system's own.
LABELS["crisis_signal"] = LABELS["risk_signal"] | LABELS["crisis_signal"]


def label(translations: NullTranslations, value: Enum | str | int | None, kind: str) -> str:
    """The translated word for ``value`` (an enum member or its code) in the list ``kind``;
    an unknown code is shown as it is (never an error on a page)."""
    if value is None:
        return ""
    code = str(value.value if isinstance(value, Enum) else value)
    entry = LABELS.get(kind, {}).get(code)
    if entry is None:
        return code
    return translations.pgettext(*entry)
