"""Page translations: gettext catalogs under service/web/locale (Babel), compiled at start-up.

The .po files are the source; :func:`compile_catalogs` writes each .mo next to its .po when it is
missing or older (so a fresh ``pip install -e .`` and a source checkout both work).
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from functools import cache
from pathlib import Path

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from fastapi import Request

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "messages"
LANGUAGES = ("ja", "en")
DEFAULT_LANGUAGE = "ja"
LANG_COOKIE = "teichaku_lang"

log = logging.getLogger(__name__)


def compile_catalogs(directory: Path = LOCALE_DIR) -> None:
    for po in directory.glob(f"*/LC_MESSAGES/{DOMAIN}.po"):
        mo = po.with_suffix(".mo")
        if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            continue
        try:
            with po.open("rb") as f:
                catalog = read_po(f, locale=po.parent.parent.name)
            with mo.open("wb") as f:
                write_mo(f, catalog)
        except OSError:  # a read-only install: the packaged .mo (if any) is used as it is
            log.warning("could not compile the %s catalog", po.parent.parent.name)
    translations.cache_clear()


@cache
def translations(language: str) -> Translations:
    return Translations.load(str(LOCALE_DIR), [language], DOMAIN)


def negotiate(request: Request, preferred: str | None = None) -> str:
    """The user's own preference, else the language cookie, else Accept-Language; Japanese by default."""
    if preferred in LANGUAGES:
        return preferred
    cookie = request.cookies.get(LANG_COOKIE)
    if cookie in LANGUAGES:
        return cookie
    header = request.headers.get("accept-language", "")
    wanted = []
    for part in header.split(","):
        tag, _, q = part.strip().partition(";q=")
        try:
            weight = float(q) if q else 1.0
        except ValueError:
            continue
        if tag:
            wanted.append((weight, tag.split("-")[0].lower()))
    for _, tag in sorted(wanted, key=lambda w: -w[0]):
        if tag in LANGUAGES:
            return tag
    return DEFAULT_LANGUAGE


_ERAS = ((date(2019, 5, 1), "令和"), (date(1989, 1, 8), "平成"))


def era(day: date) -> str:
    """The Japanese era year, e.g. 令和8年 (2026); empty before Heisei."""
    for start, name in _ERAS:
        if day >= start:
            n = day.year - start.year + 1
            return f"{name}{'元' if n == 1 else n}年"
    return ""


def show_date(day: date | None, language: str, *, with_era: bool = False) -> str:
    if day is None:
        return "—"
    text = format_date(day, format="medium" if language == "en" else "yyyy年M月d日(E)", locale=Locale.parse(language))
    if with_era and language == "ja" and (e := era(day)):
        text += f"（{e}）"
    return text


def show_time(instant: datetime | None, language: str, timezone: str) -> str:
    if instant is None:
        return "—"
    return format_datetime(instant, format="yyyy-MM-dd HH:mm", tzinfo=timezone, locale=Locale.parse(language))
