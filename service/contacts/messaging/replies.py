"""Understanding answers: classification of free text, STOP/START/HELP, and signed reply links.

Text is normalised before matching: NFKC (full-width and half-width forms, ｶﾀｶﾅ), lower case,
katakana folded to hiragana. Japanese words match anywhere (spaces removed); English words
match whole words only.
"""

from __future__ import annotations

import enum
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ReplyClass(enum.IntEnum):
    none = 0
    watch = 1
    urgent = 2
    emergency = 3


class Command(enum.StrEnum):
    stop = "stop"
    start = "start"
    help = "help"


# The four answers a client can tap (and the keypad digits of a call).
ANSWERS = {
    "doing_well": (ReplyClass.none, "doing well"),
    "some_worries": (ReplyClass.watch, "some worries"),
    "struggling": (ReplyClass.urgent, "struggling"),
    "call_me": (ReplyClass.urgent, "asks to be called"),
}
DIGITS = {"1": "doing_well", "2": "some_worries", "3": "struggling", "9": "call_me"}
# The employer's answers on an employer check-in, with the risk signals they record on the
# outcome: from the employer, absence and lateness become the crisis rules' employer_absence and
# employer_lateness (and a discordance when the client says all is well); "other" is a watch.
EMPLOYER_ANSWERS = {
    "attending_well": (ReplyClass.none, "attending well", []),
    "some_concerns": (ReplyClass.watch, "some concerns", ["other"]),
    "absences": (ReplyClass.urgent, "absences or lateness", ["absence", "lateness"]),
    "call_me": (ReplyClass.urgent, "employer asks to be called", []),
}

_STOP = {"stop", "stopall", "unsubscribe", "cancel", "end", "optout",
         "停止", "ていし", "配信停止", "はいしんていし", "受信拒否",
         "じゅしんきょひ", "中止", "ちゅうし", "解除", "かいじょ", "やめて", "いらない", "不要"}  # fmt: skip
_START = {"start", "unstop", "resume", "再開", "さいかい", "開始", "かいし"}
_HELP = {"help", "info", "ヘルプ", "へるぷ"}
# "quit" is deliberately not an opt-out word: here it more often means the job. It is classified.


def fold(text: str) -> str:
    """NFKC, lower case, katakana to hiragana."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in text)


def _squash(text: str) -> str:
    return re.sub(r"[\s\u3000]+", "", text)


def command_of(text: str) -> Command | None:
    """STOP, START or HELP when the whole message is one of those words (any width, any case)."""
    return _COMMAND_WORDS.get(_COMMAND_PUNCTUATION.sub("", fold(text)))


_COMMAND_PUNCTUATION = re.compile(r"[\s\u3000!！。．.、,]+")
# Folded once, not per message: every inbound SMS is looked up here first.
_COMMAND_WORDS = {
    fold(w): command
    for command, words in ((Command.help, _HELP), (Command.start, _START), (Command.stop, _STOP))
    for w in words
}  # STOP last: it wins should a word ever be in two lists, as it did when checked first


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    reply_class: str = Field(alias="class", pattern="^(watch|urgent|emergency)$")
    reason: str = Field(min_length=1, max_length=200)
    words: list[str] = Field(min_length=1)


@dataclass(frozen=True)
class _Compiled:
    reply_class: ReplyClass
    reason: str
    japanese: tuple[str, ...]
    english: re.Pattern[str] | None


class RuleError(Exception):
    pass


class Classifier:
    def __init__(self, rules: list[_Rule]) -> None:
        compiled = []
        for r in rules:
            ja = tuple(_squash(fold(w)) for w in r.words if not w.isascii())
            en = [w for w in r.words if w.isascii()]
            pattern = None
            if en:
                alts = "|".join(r"\s*".join(map(re.escape, fold(w).split())) for w in en)
                pattern = re.compile(rf"(?<![a-z0-9])(?:{alts})(?![a-z0-9])")
            compiled.append(_Compiled(ReplyClass[r.reply_class], r.reason, ja, pattern))
        # Most severe first, so the first match is the class.
        self.rules = sorted(compiled, key=lambda c: -c.reply_class)

    @classmethod
    def from_files(cls, *paths: Path) -> Classifier:
        rules = []
        for path in paths:
            if not path.exists():
                continue
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
                rules += [_Rule.model_validate(r) for r in data.get("rules", [])]
            except (tomllib.TOMLDecodeError, ValidationError, UnicodeDecodeError, AttributeError) as exc:
                raise RuleError(f"{path}: {exc}") from exc
        if not rules:
            raise RuleError("no reply classification rules found")
        return cls(rules)

    def classify(self, text: str | None) -> tuple[ReplyClass, str | None]:
        if not text:
            return ReplyClass.none, None
        folded = fold(text)
        squashed = _squash(folded)
        for rule in self.rules:
            if any(w in squashed for w in rule.japanese) or (rule.english and rule.english.search(folded)):
                return rule.reply_class, rule.reason
        return ReplyClass.none, None


def combine(*parts: tuple[ReplyClass, str | None]) -> tuple[ReplyClass, str | None]:
    """The most severe of several classifications (a tapped answer and the text beside it)."""
    best = max(parts, key=lambda p: p[0])
    return best


@dataclass(frozen=True)
class ReplyLinks:
    """Signed, expiring reply links; single use is enforced on the outbox row (answered_at)."""

    secret_key: str
    public_url: str
    max_age_days: int = 14

    def _s(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.secret_key, salt="teichaku.reply-link")

    def token(self, outbox_id: int) -> str:
        return self._s().dumps(outbox_id)

    def url(self, outbox_id: int) -> str:
        return f"{self.public_url.rstrip('/')}/r/{self.token(outbox_id)}"

    def read(self, token: str) -> tuple[int | None, str | None]:
        """(outbox id, None), (outbox id, "expired") or (None, "invalid").

        An expired link is still ours (its signature is good), so its message is known: the
        page can say so in the client's language, with the office's phone number."""
        problem = None
        try:
            value = self._s().loads(token, max_age=self.max_age_days * 86400)
        except SignatureExpired:
            problem = "expired"
            try:  # the signature was checked; only the age is wrong
                value = self._s().loads(token)
            except BadSignature:
                return None, "invalid"
        except BadSignature:
            return None, "invalid"
        return (value, problem) if isinstance(value, int) else (None, "invalid")
