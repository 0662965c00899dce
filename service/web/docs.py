"""/docs: Swagger UI served from the vendored copy under /static (no CDN: closed municipal networks).

FastAPI's own /docs page loads Swagger UI from a CDN and starts it with an inline script; this one
loads the vendored bundle and a static initializer, so the page runs under a CSP without
'unsafe-inline' scripts. ReDoc (CDN only) is not served.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

VENDOR = "/static/vendor/swagger-ui"

_DOCS = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Teichaku API</title>
<link rel="stylesheet" href="{VENDOR}/swagger-ui.css">
</head>
<body>
<main id="swagger-ui"></main>
<script src="{VENDOR}/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body>
</html>
"""

_REDIRECT = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Teichaku API: sign-in</title></head>
<body><script src="{VENDOR}/oauth2-redirect.js"></script></body>
</html>
"""


def include_docs(app: FastAPI) -> None:
    """Serve /docs and its OAuth2 redirect page (create the app with docs_url=None, redoc_url=None)."""

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_DOCS)

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def oauth2_redirect() -> HTMLResponse:
        return HTMLResponse(_REDIRECT)
