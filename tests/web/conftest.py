"""Page tests: a live uvicorn server (the real app on a free port, over the test database) and
headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

Chromium is installed by ``make test`` / ``.ci/run`` (``apt-get install chromium chromium-driver``)
when it is missing; without it the browser tests are skipped with the reason (failed under CI).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from tests.helpers import PASSWORD

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
AXE = ROOT / "tests" / "node_modules" / "axe-core" / "axe.min.js"
# A hung browser or live server fails its test instead of stopping the run (pytest-timeout). The signal
# method raises in the test; the thread method would end the whole pytest process.
TIMEOUT_SECONDS = 120
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A conftest's pytestmark is not applied to tests, and this hook sees the whole session's items.
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUT_SECONDS, method="signal"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The test app (test database, fixed clock) served by uvicorn in a thread; yields its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the live server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


# Per test, not per session: a running sync Playwright keeps an event loop going in this thread, and
# the rest of the suite calls asyncio.run() (the jobs, aiosmtplib).
@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        msg = f"{CHROMIUM} is missing: `apt-get install -y chromium chromium-driver` (make test does it)"
        if os.environ.get("REQUIRE_POSTGRES"):  # CI: a skipped browser test is a failure
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(locale="ja-JP")
    p = context.new_page()
    yield p
    context.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def axe_violations(page) -> list[dict]:
    """Run axe-core (tests/node_modules, pinned in tests/package.json) in the page; the serious
    and critical violations."""
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run `cd tests && npm ci` (make test does it)")
    # Evaluated through the DevTools protocol: the page's CSP (no inline scripts) stays in force.
    page.evaluate("() => {\n" + AXE.read_text() + "\n}")
    result = page.evaluate("async () => await window.axe.run(document, {resultTypes: ['violations']})")
    bad = [v for v in result["violations"] if v.get("impact") in ("serious", "critical")]
    if bad:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "axe-last-failure.json").write_text(json.dumps(bad, ensure_ascii=False, indent=1))
    return bad


def sign_in(page, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/sign-in")
    page.get_by_label("メールアドレス").fill(email)
    page.get_by_label("パスワード").fill(password)
    page.get_by_role("button", name="サインイン").click()
