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
    # crisis flags (service/outcomes/crisis.py)
    "kind.crisis_call": {"ja": "危機対応の電話", "en": "crisis call"},
    "kind.missed_session_call": {"ja": "プログラム欠席後の連絡", "en": "call after a missed program session"},
    "party.system": {"ja": "システム", "en": "system"},
    "crisis_severity.watch": {"ja": "見守り", "en": "watch"},
    "crisis_severity.urgent": {"ja": "緊急", "en": "urgent"},
    "crisis_severity.emergency": {"ja": "非常", "en": "emergency"},
    "crisis_status.open": {"ja": "未確認", "en": "open"},
    "crisis_status.acknowledged": {"ja": "確認済み", "en": "acknowledged"},
    "crisis_status.resolved": {"ja": "解決済み", "en": "resolved"},
    "crisis_signal.absence": {"ja": "欠勤", "en": "absence"},
    "crisis_signal.lateness": {"ja": "遅刻", "en": "lateness"},
    "crisis_signal.conflict": {"ja": "職場でのトラブル", "en": "conflict at work"},
    "crisis_signal.health": {"ja": "体調", "en": "health"},
    "crisis_signal.money": {"ja": "お金の問題", "en": "money trouble"},
    "crisis_signal.housing": {"ja": "住まいの問題", "en": "housing trouble"},
    "crisis_signal.isolation": {"ja": "孤立", "en": "isolation"},
    "crisis_signal.wants_to_quit": {"ja": "退職の意向", "en": "wants to quit"},
    "crisis_signal.family_trouble": {"ja": "家族の問題", "en": "family trouble"},
    "crisis_signal.other": {"ja": "その他", "en": "other"},
    "crisis_signal.unreachable": {"ja": "連絡がつかない", "en": "unreachable"},
    "crisis_signal.wellbeing_drop": {"ja": "調子の低下", "en": "wellbeing drop"},
    "crisis_signal.reply_urgent": {"ja": "返信（緊急）", "en": "reply: urgent"},
    "crisis_signal.reply_emergency": {"ja": "返信（非常）", "en": "reply: emergency"},
    "crisis_signal.employer_absence": {"ja": "事業所から欠勤の報告", "en": "employer reports absence"},
    "crisis_signal.employer_lateness": {"ja": "事業所から遅刻の報告", "en": "employer reports lateness"},
    "crisis_signal.employer_conflict": {"ja": "事業所からトラブルの報告", "en": "employer reports conflict"},
    "crisis_signal.discordance": {"ja": "本人と事業所の話の食い違い", "en": "client and employer disagree"},
    "crisis_signal.missed_session": {"ja": "プログラム欠席", "en": "missed program session"},
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
