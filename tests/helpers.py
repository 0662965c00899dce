"""Test helpers: a small world of offices and staff, and an API client that signs in."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fastapi.testclient import TestClient
from sqlmodel import Session

from service.accounts import service as accounts
from service.accounts.models import Role, StaffUser
from service.security import hash_password

PASSWORD = "correct horse battery"


@lru_cache
def password_hash() -> str:
    # argon2 is slow by design; hash once per run, not 8 times per test.
    return hash_password(PASSWORD)


@dataclass
class World:
    office_a: int
    office_b: int
    users: dict[str, int]  # "a.worker" -> id


def build_world(session: Session) -> World:
    a = accounts.create_office(session, name="Office A", timezone="Asia/Tokyo", phone="+81126221001")
    b = accounts.create_office(session, name="Office B", timezone="America/New_York")
    users = {}
    for office, key in ((a, "a"), (b, "b")):
        for role in ("worker", "worker2", "manager", "admin"):
            user = StaffUser(
                email=f"{role}@{key}.example.jp",
                name=f"{role.title()} {key.upper()}",
                role=Role.worker if role == "worker2" else Role(role),
                office_id=office.id,
                password_hash=password_hash(),
            )
            session.add(user)
            session.flush()
            users[f"{key}.{role}"] = user.id
    return World(a.id, b.id, users)


class Api:
    """Signs in as a named user of the world and calls the JSON API."""

    def __init__(self, http: TestClient, world: World) -> None:
        self.http = http
        self.world = world
        self._tokens: dict[str, str] = {}

    def headers(self, who: str) -> dict[str, str]:
        if who not in self._tokens:
            role, office = who.split(".")[1], who.split(".")[0]
            r = self.http.post(
                "/api/v1/auth/token", data={"username": f"{role}@{office}.example.jp", "password": PASSWORD}
            )
            assert r.status_code == 200, r.text
            self._tokens[who] = r.json()["access_token"]
        return {"Authorization": f"Bearer {self._tokens[who]}"}

    def get(self, who: str, url: str, **kw: Any):
        return self.http.get(url, headers=self.headers(who), **kw)

    def post(self, who: str, url: str, json: Any = None, **kw: Any):
        return self.http.post(url, headers=self.headers(who), json=json, **kw)

    def patch(self, who: str, url: str, json: Any = None, **kw: Any):
        return self.http.patch(url, headers=self.headers(who), json=json, **kw)

    def ok(self, response, status: int = 200) -> Any:
        assert response.status_code == status, f"{response.status_code}: {response.text}"
        return response.json()

    # -- building blocks ------------------------------------------------------------

    def client(self, who: str = "a.worker", **fields: Any) -> dict:
        body = {
            "name": "山田 太郎",
            "kana": "ヤマダ タロウ",
            "phone": "090-1234-5678",
            "email": "taro@example.jp",
            "category": "public_assistance",
            "consent_automated": True,
            "consent_family": False,
            "consent_employer": True,
        } | fields
        return self.ok(self.post(who, "/api/v1/clients", body), 201)

    def employer(self, who: str = "a.worker", **fields: Any) -> dict:
        body = {
            "name": "岩見沢食品工業",
            "address": "北海道岩見沢市1条西1丁目",
            "supervisor_name": "佐藤 現場",
            "phone": "0126-22-3333",
            "email": "genba@example.jp",
        } | fields
        return self.ok(self.post(who, "/api/v1/employers", body), 201)

    def placement(self, who: str = "a.worker", *, start: str, plan: str = "standard-3m", **fields: Any) -> dict:
        client = fields.pop("client", None) or self.client(who)
        employer = fields.pop("employer", None) or self.employer(who)
        body = {
            "client_id": client["id"],
            "employer_id": employer["id"],
            "job_title": "清掃スタッフ",
            "employment_type": "general",
            "start_date": start,
            "plan": plan,
        } | fields
        return self.ok(self.post(who, "/api/v1/placements", body), 201)

    def follow_ups(self, who: str, placement_id: int) -> list[dict]:
        return self.ok(self.get(who, f"/api/v1/placements/{placement_id}/follow-ups"))


def sign_in_page(http: TestClient, email: str, password: str = PASSWORD):
    """Sign in through the pages (service/web/): the form's CSRF token, then the session cookie."""
    import re

    page = http.get("/sign-in")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    return http.post("/sign-in", data={"csrf_token": token, "email": email, "password": password, "next": "/today"})


def csrf_of(html: str) -> str:
    """The CSRF token of a page's forms."""
    import re

    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
