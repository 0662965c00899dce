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
    mark_missed_interval_minutes: int = Field(default=15, ge=1)
    host: str = "127.0.0.1"
    port: int = 8000
    config_dir: Path = Field(default_factory=default_config_dir)

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
                "TEICHAKU_SECRET_KEY must be set to a random value of at least 32 characters "
                "outside development"
            )
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
