"""Domain errors. Operations raise these; one handler in ``service.app`` maps them to HTTP."""

from __future__ import annotations

from dataclasses import dataclass


class DomainError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    """Absent, or in another office: the caller cannot tell which."""

    status_code = 404

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")


class Conflict(DomainError):
    status_code = 409


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str
    line: int | None = None  # for imports: the line of the file


class ValidationFailed(DomainError):
    """One or more fields are wrong; every problem is reported, not just the first."""

    status_code = 422

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(_describe(e) for e in errors))
        self.errors = errors

    @classmethod
    def one(cls, field: str, message: str) -> ValidationFailed:
        return cls([FieldError(field, message)])


def _describe(e: FieldError) -> str:
    where = f"line {e.line}, " if e.line is not None else ""
    return f"{where}{e.field}: {e.message}"
