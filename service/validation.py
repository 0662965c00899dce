"""Parsers for what people type: phone numbers, e-mail addresses, time zones.

Used by API schemas (as pydantic validators, so errors come back per field) and by the CSV
import. Each raises ``ValueError`` with a message fit to show the person who typed it.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BeforeValidator


def clean_text(value: object) -> object:
    """Trim, and fold full-width ASCII to half-width (NFKC) for identifiers like numbers."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def parse_phone(raw: str, region: str = "JP") -> str:
    """Japanese domestic formats (090-1234-5678, ０９０…, (03) 1234-5678) or +81…; E.164 out."""
    text = unicodedata.normalize("NFKC", raw).strip()
    # Japanese typists use long-vowel marks and dashes of many kinds between digit groups.
    for dash in "ー－‐‑–—―−":
        text = text.replace(dash, "-")
    if not text:
        raise ValueError("phone number is empty")
    if len(text) > 32:
        raise ValueError("phone number is too long")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError("not a phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def parse_email(raw: str) -> str:
    text = unicodedata.normalize("NFKC", raw).strip()
    try:
        return validate_email(text, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid e-mail address: {exc}") from exc


def parse_timezone(raw: str) -> str:
    try:
        ZoneInfo(raw)
    # OSError: a folder of the zone database ("America") or a name too long for a file name.
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone {raw!r}") from exc
    return raw


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def no_control_chars(value: object) -> object:
    """Refuse control characters in free text (tab and line breaks are fine). PostgreSQL
    cannot store NUL at all, so without this such a value is a server error, not a 422."""
    if isinstance(value, str) and _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


def is_mobile(e164: str) -> bool:
    number = phonenumbers.parse(e164)
    return phonenumbers.number_type(number) in (
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    )


Phone = Annotated[str, BeforeValidator(clean_text), AfterValidator(parse_phone)]
Email = Annotated[str, BeforeValidator(clean_text), AfterValidator(parse_email)]
# Optional ones: an empty or blank entry means "none on record", as a form field left empty.
OptionalPhone = Annotated[str | None, BeforeValidator(clean_text), AfterValidator(lambda v: v and parse_phone(v))]
OptionalEmail = Annotated[str | None, BeforeValidator(clean_text), AfterValidator(lambda v: v and parse_email(v))]
TimeZoneName = Annotated[str, AfterValidator(parse_timezone)]
# Database ids are 32-bit on PostgreSQL; a larger number can name no record.
MAX_ID = 2**31 - 1
