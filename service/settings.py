"""Settings: environment variables (prefix ``TEICHAKU_``) over the defaults in ``config/``.

``DATABASE_URL`` (no prefix) picks the database, as most hosting platforms set it.
Unsafe values are refused outside development, so a production deployment cannot start
with the demo secret.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEV_SECRET = "development-only-secret-change-me"


def default_config_dir() -> Path:
    """``TEICHAKU_CONFIG_DIR``, else ``./config``, else the checkout's ``config/``."""
    if env := os.environ.get("TEICHAKU_CONFIG_DIR"):
        return Path(env)
    here = Path.cwd() / "config"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "config"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEICHAKU_", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = Field(
        default="sqlite:///./data/teichaku.db",
        validation_alias=AliasChoices("DATABASE_URL", "TEICHAKU_DATABASE_URL"),
    )
    secret_key: str = DEV_SECRET
    token_ttl_minutes: int = Field(default=480, ge=5, le=60 * 24 * 14)
    default_timezone: str = "Asia/Tokyo"
    scheduler_enabled: bool = True
    # An API process acts on an inbound SMS (its answer's outcome, a STOP, the crisis rules) right
    # after Twilio hears 200 (True: one process in all), or only keeps it for the scheduler's
    # process_replies job (False: `teichaku serve --no-scheduler`, beside `teichaku scheduler`
    # processes), so API processes spend their time answering webhooks (issue 7, benchmark 4).
    act_on_sms_in_api: bool = True
    # How often process_replies looks for kept SMS not acted on yet (an index of only those rows).
    reply_interval_seconds: int = Field(default=2, ge=1, le=60)
    # Threads that job acts in on PostgreSQL (SQLite: one). More drain a burst sooner but take CPU
    # from API processes on the same machine (bench/README.md, webhooks): raise it for a scheduler
    # with cores of its own.
    reply_threads: int = Field(default=1, ge=1, le=8)
    mark_missed_interval_minutes: int = Field(default=15, ge=1)
    host: str = "127.0.0.1"
    port: int = 8000
    config_dir: Path = Field(default_factory=default_config_dir)

    # -- messaging (check-ins, replies, digests) --------------------------------------
    # The address clients and Twilio reach us at; signatures and reply links are built on it.
    public_url: str = "http://127.0.0.1:8000"
    smtp_host: str | None = None  # unset: e-mail goes to the development adapter (not sent)
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_from: str = "teichaku@localhost"
    smtp_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    # Sessions kept open and reused across dispatch ticks (several send at once when one cannot keep
    # up with the send rate); one unused this long is closed (servers drop idle ones after ~5 min).
    smtp_pool_size: int = Field(default=4, ge=1, le=16)
    smtp_idle_seconds: float = Field(default=60.0, gt=0, le=3600)
    # PEM file of the CAs that sign the server's certificate (a private CA); unset: the system's.
    # The certificate is always verified.
    smtp_ca_file: str | None = None
    # MAIL FROM, RCPT TO and DATA in one write where the server offers PIPELINING (RFC 2920): two round
    # trips an e-mail instead of four. False: one command at a time, whatever the server offers.
    smtp_pipelining: bool = True
    # When set, GET /metrics wants "Authorization: Bearer <this>" (Prometheus: authorization.credentials);
    # unset, it answers anyone who reaches it (keep it on the internal network then).
    metrics_token: str | None = Field(default=None, min_length=16)
    twilio_account_sid: str | None = None  # unset: SMS and calls go to the development adapter
    twilio_auth_token: str | None = None
    twilio_from: str | None = None  # a number, an alphanumeric sender or a messaging service SID
    twilio_api_base_url: str = "https://api.twilio.com"
    twilio_two_way_sms: bool = False  # Japan: two-way SMS is not supported, so off by default
    twilio_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    # Never more than this many messages per second from one sender (SMS number or SMTP account).
    send_rate_per_second: float = Field(default=1.0, gt=0, le=100)
    # Automated messages only inside this local window, unless the office or client says otherwise.
    send_window_start: str = Field(default="09:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    send_window_end: str = Field(default="20:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    reply_link_days: int = Field(default=14, ge=1, le=60)
    late_cancel_days: int = Field(default=2, ge=1, le=14)  # after an outage, older check-ins are cancelled
    unanswered_hours: int = Field(default=48, ge=1, le=24 * 14)
    dispatch_interval_seconds: int = Field(default=20, ge=5)
    dispatch_batch: int = Field(default=200, ge=1, le=10_000)
    # Test only (refused unless environment=test): the service's clock, for tests that run it in
    # subprocesses. An ISO instant ("2026-04-20T09:00:00+09:00"), or "@/path/file" holding one,
    # re-read on every look at the clock, so a test moves time for every process at once.
    fake_now: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=default_config_dir() / "teichaku.toml")
        return (init_settings, env_settings, toml, file_secret_settings)

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, url: str) -> str:
        # Hosting platforms hand out postgres:// URLs; SQLAlchemy wants the driver named.
        for prefix in ("postgres://", "postgresql://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url

    @field_validator("default_timezone")
    @classmethod
    def _valid_zone(cls, tz: str) -> str:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {tz!r}") from exc
        return tz

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.environment == "production" and (
            not self.secret_key or self.secret_key == DEV_SECRET or len(self.secret_key) < 32
        ):
            raise ValueError(
                "TEICHAKU_SECRET_KEY must be set to a random value of at least 32 characters outside development"
            )
        if self.fake_now and self.environment != "test":
            raise ValueError("TEICHAKU_FAKE_NOW is for tests only: it is refused unless TEICHAKU_ENVIRONMENT=test")
        if self.environment == "production" and not self.public_url.startswith("https://"):
            raise ValueError("TEICHAKU_PUBLIC_URL must be an https:// address outside development")
        return self

    @property
    def plans_dir(self) -> Path:
        return self.config_dir / "plans"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
