"""Labels for the domain's words, in Japanese and English.

Kept in one place so the API, the CLI and (later) the pages say the same thing.
"""

from __future__ import annotations

from enum import Enum

LABELS: dict[str, dict[str, str]] = {
    # parties
    "party.client": {"ja": "本人", "en": "client"},
    "party.family": {"ja": "家族", "en": "family"},
    "party.employer": {"ja": "事業所", "en": "employer"},
    # channels
    "channel.phone": {"ja": "電話", "en": "phone"},
    "channel.sms": {"ja": "SMS", "en": "SMS"},
    "channel.email": {"ja": "メール", "en": "e-mail"},
    "channel.voice": {"ja": "自動音声電話", "en": "automated call"},
    "channel.visit": {"ja": "訪問", "en": "visit"},
    "channel.meeting": {"ja": "面談", "en": "meeting"},
    # kinds
    "kind.check_in": {"ja": "定着確認", "en": "check-in"},
    "kind.three_party_meeting": {"ja": "三者面談", "en": "three-party meeting"},
    "kind.employer_visit": {"ja": "企業訪問", "en": "employer visit"},
    "kind.family_contact": {"ja": "家族への連絡", "en": "family contact"},
    "kind.final_review": {"ja": "最終確認", "en": "final review"},
    "kind.separation_call": {"ja": "離職後の連絡", "en": "separation call"},
    "kind.retry": {"ja": "再連絡", "en": "retry"},
}


def label(value: Enum | str, prefix: str, language: str = "ja") -> str:
    key = f"{prefix}.{value.value if isinstance(value, Enum) else value}"
    entry = LABELS.get(key)
    if entry is None:
        return str(value)
    return entry.get(language) or entry["en"]


def action_text(*, kind: Enum, channel: Enum, party: Enum, language: str = "ja") -> str:
    """What to do, in a few words: 「定着確認：本人に電話」 / "check-in: phone the client"."""
    k, c, p = label(kind, "kind", language), label(channel, "channel", language), label(party, "party", language)
    if language == "ja":
        return f"{k}：{p}（{c}）"
    return f"{k}: {c} with the {p}"
