"""/docs works inside a closed network: Swagger UI comes from the service itself, under the CSP."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.web.conftest import screenshot


def test_api_docs_load_only_from_the_service_and_render_the_operations(live_server, browser):
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    requested: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    response = page.goto(f"{live_server}/docs")
    assert response is not None and response.status == 200
    # Swagger UI renders an operation block per route once it has read /openapi.json.
    page.locator(".opblock-summary-path", has_text="/api/v1/queue").first.wait_for(timeout=20_000)
    screenshot(page, "api-docs")

    hosts = {urlsplit(u).netloc for u in requested if u.startswith("http")}
    assert hosts == {urlsplit(live_server).netloc}, f"requests left the service: {hosts}"
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
    assert page.locator(".opblock").count() > 20
    context.close()


def test_redoc_is_not_served(http):
    assert http.get("/redoc").status_code == 404
