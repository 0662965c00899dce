"""Message texts (``config/messages.toml``), in the recipient's language."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

KEYS = (
    "sms_check_in", "sms_check_in_two_way", "email_check_in_subject", "email_check_in_body",
    "employer_subject", "employer_body", "voice_prompt", "voice_thanks", "voice_no_input",
    "opt_out_confirm", "opt_in_confirm", "help",
    # escalation and the morning digest (service/outcomes/jobs.py)
    "escalation_sms", "escalation_email_subject", "escalation_email_body",
    "digest_subject", "digest_body", "digest_none_subject", "digest_none_body",
    "digest_crisis", "digest_overdue", "digest_today", "digest_line", "digest_line_overdue", "digest_more",
)  # fmt: skip


@dataclass(frozen=True)
class Texts:
    by_language: dict[str, dict[str, str]]

    @classmethod
    def load(cls, path: Path) -> Texts:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        problems = [f"{path}: [{lang}] is missing {k!r}" for lang in ("ja", "en") for k in KEYS
                    if k not in data.get(lang, {})]  # fmt: skip
        if problems:
            raise ValueError("\n".join(problems))
        return cls({lang: {k: v.strip() for k, v in data[lang].items()} for lang in ("ja", "en")})

    def render(self, key: str, language: str, **values: str) -> str:
        table = self.by_language.get(language) or self.by_language["ja"]
        return table[key].format(**values)
