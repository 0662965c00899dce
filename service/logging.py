"""Structured logs: one JSON object per line, with the request id of the request being served.

Nothing personal may reach a log line. The code logs ids and counts, never names, numbers or
addresses; on top of that this module (1) keeps chatty libraries that log request bodies or SQL
parameters (twilio, SQLAlchemy, uvicorn's access log with its paths and query strings) at WARNING,
(2) writes exceptions as their type and stack frames only (an exception's message can quote a
phone number or an e-mail address), and (3) masks anything shaped like an e-mail address, a phone
number or Japanese text in the final line, as a last net.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

QUIET_LOGGERS = (
    "sqlalchemy",
    "twilio",
    "httpx",
    "httpcore",
    "aiosmtplib",
    "mail.log",
    "uvicorn.access",
    "multipart",
    "python_multipart",
    "apscheduler",
    "hpack",
    "faker",
)
MASK = "[redacted]"
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+", re.UNICODE)
_PHONE = re.compile(r"(?<![\w.])\+?\d[\d\- ()]{7,}\d")
# Kana, kanji and full-width forms: log messages are written in English, so these came from data.
_JAPANESE = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]+")


def scrub(text: str) -> str:
    text = _EMAIL.sub(MASK, text)
    text = _PHONE.sub(MASK, text)
    return _JAPANESE.sub(MASK, text)


def safe_exception(exc_info: Any) -> str:
    """The exception's type and where it happened, without its message."""
    etype, _value, tb = exc_info
    frames = [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(tb)]
    return f"{getattr(etype, '__name__', 'Exception')} at " + " <- ".join(reversed(frames[-8:]))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            entry["request_id"] = rid
        for key in ("method", "route", "status", "duration_ms", "job", "rows"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = safe_exception(record.exc_info)
        # Every field but the timestamp (a date looks like a phone number to the scrubber).
        ts = entry.pop("ts")
        return json.dumps({"ts": ts} | json.loads(scrub(json.dumps(entry, ensure_ascii=False, default=str))),
                          ensure_ascii=False)  # fmt: skip


_HANDLER_NAME = "teichaku-json"


def configure_logging(level: int | str = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Install the JSON handler on the root logger (once; a second call replaces it)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER_NAME:
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # uvicorn's own error logger writes tracebacks with messages; route it through ours.
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers = []
        lg.propagate = True
    return handler
