# One image, two roles: `teichaku serve` (API + scheduler, default) or, with
# TEICHAKU_SCHEDULER_ENABLED=false, API only. Settings come from TEICHAKU_* variables.
# Several processes on PostgreSQL (compose.yaml, docs/deploy.md), chosen by command:
#   API only:        teichaku serve --no-scheduler          (port 8000)
#   scheduler only:  teichaku scheduler --port 8001         (/healthz, /readyz, /metrics only;
#                    set TEICHAKU_HEALTH_PORT=8001 so the health check below asks the right port)
#   migrations:      teichaku migrate                        (once, before the others start)
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TEICHAKU_ENVIRONMENT=production \
    TEICHAKU_CONFIG_DIR=/app/config \
    TEICHAKU_HOST=0.0.0.0 \
    TEICHAKU_PORT=8000 \
    DATABASE_URL=sqlite:////app/data/teichaku.db

RUN groupadd --system --gid 10001 teichaku \
 && useradd --system --uid 10001 --gid teichaku --home-dir /app --shell /usr/sbin/nologin teichaku

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY config ./config
RUN pip install . && mkdir -p /app/data && chown teichaku:teichaku /app/data

USER teichaku
EXPOSE 8000 8001
VOLUME ["/app/data"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TEICHAKU_HEALTH_PORT', '8000'), timeout=4)" || exit 1

# Refuses to start without TEICHAKU_SECRET_KEY (32+ random characters) in production.
CMD ["sh", "-c", "teichaku migrate && exec teichaku serve"]
