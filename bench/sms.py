"""(5b) SMS pacing: the real ``TwilioAdapter`` against a local endpoint that enforces Twilio's
one message per second per sender.

``SmsEndpoint`` is a real HTTP server on 127.0.0.1 (``http.server`` in a thread) answering
Twilio's ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` as Twilio does: form-encoded
``To``, ``From`` or ``MessagingServiceSid``, ``Body``, ``StatusCallback``; Basic authentication
with the account SID; a 201 message resource with a unique ``SM...`` SID. A request arriving less
than ``interval`` (1 s) after the previous accepted one from the same sender gets Twilio's 429
(code 20429) and is counted as an overrun. It records every arrival (``time.monotonic()`` once
the request's headers are read) per sender. The tests use it too (``tests/contacts/test_sms_pacing.py``).

The case sends through the adapter's public ``send_sms`` (real ``twilio`` client, base URL pointed
at the endpoint), as ``dispatch_once`` does: N messages from one sender one after the other, then
N split over three senders with every send started at once (each sender's pacer queues them).

    python -m bench.run --db sqlite --only sms
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import statistics
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from service.contacts.messaging.ports import SendError, Sent, Sms
from service.contacts.messaging.twilio_adapter import TwilioAdapter

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "bench-auth-token-0123456789"
MESSAGES = re.compile(r"^/2010-04-01/Accounts/(AC[0-9a-f]{32})/Messages\.json$")


def twilio_error(code: int, status: int, message: str) -> dict:
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    return {"code": code, "message": message, "more_info": more_info, "status": status}


@dataclass(frozen=True)
class Arrival:
    at: float  # time.monotonic() when the request's headers had been read
    sender: str  # From, or MessagingServiceSid
    sid: str | None  # the message's SID; None when refused
    outbox_id: str | None  # from the StatusCallback URL (?outbox_id=...)


@dataclass
class SmsEndpoint:
    """Twilio's Messages resource on loopback, one accepted message per ``interval`` per sender."""

    interval: float = 1.0
    accepted: dict[str, list[Arrival]] = field(default_factory=dict)
    overruns: list[Arrival] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> SmsEndpoint:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def admit(self, at: float, sender: str, outbox_id: str | None) -> Arrival:
        """Accept the message (a new SID) or refuse it as an overrun (SID None)."""
        with self._lock:
            seen = self.accepted.setdefault(sender, [])
            if seen and at - seen[-1].at < self.interval:
                arrival = Arrival(at, sender, None, outbox_id)
                self.overruns.append(arrival)
            else:
                arrival = Arrival(at, sender, "SM" + uuid.uuid4().hex, outbox_id)
                seen.append(arrival)
            return arrival

    def gaps(self, sender: str) -> list[float]:
        times = [a.at for a in self.accepted.get(sender, [])]
        return [b - a for a, b in zip(times, times[1:], strict=False)]


def _handler(endpoint: SmsEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the requests carry phone numbers
            pass

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802
            at = time.monotonic()
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = MESSAGES.match(self.path)
            if not path:
                return self._json(404, twilio_error(20404, 404, "The requested resource was not found"))
            account = path.group(1)
            scheme, _, credentials = (self.headers.get("Authorization") or "").partition(" ")
            try:
                user = base64.b64decode(credentials).decode().partition(":")[0]
            except ValueError:
                user = ""
            if scheme != "Basic" or user != account:
                return self._json(401, twilio_error(20003, 401, "Authenticate"))
            form = dict(urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True))
            sender = form.get("From") or form.get("MessagingServiceSid")
            if not form.get("To"):
                return self._json(400, twilio_error(21604, 400, "A 'To' phone number is required."))
            if not sender:
                return self._json(400, twilio_error(21603, 400, "A 'From' phone number is required."))
            if not form.get("Body"):
                return self._json(400, twilio_error(21602, 400, "Message body is required."))
            callback = urllib.parse.urlsplit(form.get("StatusCallback", ""))
            outbox_id = urllib.parse.parse_qs(callback.query).get("outbox_id", [None])[0]
            arrival = endpoint.admit(at, sender, outbox_id)
            if arrival.sid is None:
                return self._json(429, twilio_error(20429, 429, "Too Many Requests"))
            now = format_datetime(datetime.now(UTC))
            uri = f"/2010-04-01/Accounts/{account}/Messages/{arrival.sid}"
            self._json(
                201,
                {
                    "account_sid": account,
                    "api_version": "2010-04-01",
                    "body": form["Body"],
                    "date_created": now,
                    "date_sent": None,
                    "date_updated": now,
                    "direction": "outbound-api",
                    "error_code": None,
                    "error_message": None,
                    "from": form.get("From"),
                    "messaging_service_sid": form.get("MessagingServiceSid"),
                    "num_media": "0",
                    "num_segments": "1",
                    "price": None,
                    "price_unit": "USD",
                    "sid": arrival.sid,
                    "status": "accepted" if "MessagingServiceSid" in form and "From" not in form else "queued",
                    "subresource_uris": {"media": f"{uri}/Media.json"},
                    "to": form["To"],
                    "uri": f"{uri}.json",
                },
            )

    return Handler


# -- the case -------------------------------------------------------------------------------------

ONE_SENDER = "+15005550001"
SENDERS = ("+15005550002", "+15005550003", "MG" + "fedcba9876543210" * 2)  # two numbers, a messaging service


def adapter(endpoint: SmsEndpoint, sender: str, rate: float = 1.0) -> TwilioAdapter:
    """The real adapter (the real twilio client), its base URL pointed at ``endpoint``."""
    return TwilioAdapter(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        sender=sender,
        public_url="https://teichaku.bench.example",
        base_url=endpoint.url,
        rate_per_second=rate,
    )


def sms(i: int) -> Sms:
    return Sms(i, f"+8190{i:08d}", f"お仕事の様子はいかがですか？ ({i})")


def _spread(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    return {
        "min": s[0],
        "median": statistics.median(s),
        "p95": s[min(len(s) - 1, round(0.95 * (len(s) - 1)))],
        "max": s[-1],
        "n": len(s),
    }


def send_round(endpoint: SmsEndpoint, per_sender: dict[str, int], *, all_at_once: bool, rate: float = 1.0) -> dict:
    """Send ``per_sender[sender]`` messages from each sender through ``send_sms`` and check what the
    endpoint saw. Senders always run side by side; ``all_at_once`` starts every send of a sender at
    once too (else one after the other, as ``dispatch_once`` sends)."""
    adapters = {sender: adapter(endpoint, sender, rate) for sender in per_sender}
    ids = iter(range(1, 1 + sum(per_sender.values())))
    batches = {sender: [sms(next(ids)) for _ in range(n)] for sender, n in per_sender.items()}
    overruns_before = len(endpoint.overruns)
    before = {sender: len(endpoint.accepted.get(sender, [])) for sender in per_sender}

    async def one_sender(sender: str) -> list[Sent | SendError]:
        to, batch = adapters[sender], batches[sender]
        if all_at_once:
            return list(await asyncio.gather(*(to.send_sms(m) for m in batch), return_exceptions=True))
        out: list[Sent | SendError] = []
        for m in batch:
            try:
                out.append(await to.send_sms(m))
            except SendError as exc:
                out.append(exc)
        return out

    async def everyone() -> list[list[Sent | SendError]]:
        return await asyncio.gather(*(one_sender(s) for s in per_sender))

    started = time.monotonic()
    results = dict(zip(per_sender, asyncio.run(everyone()), strict=True))
    wall = time.monotonic() - started

    theoretical = max((n - 1) * (1.0 / rate) for n in per_sender.values())
    gaps: list[float] = []
    spans, first_after_start, accepted_once = {}, [], True
    for sender, batch in batches.items():
        seen = endpoint.accepted[sender][before[sender] :]
        sent = [r.provider_id for r in results[sender] if isinstance(r, Sent)]
        # Every message accepted once: one arrival per outbox id, and the SIDs the adapter got back
        # are the ones the endpoint issued.
        accepted_once &= sorted(a.outbox_id for a in seen) == sorted(str(m.outbox_id) for m in batch)
        accepted_once &= sorted(sent) == sorted(a.sid for a in seen) and len(set(sent)) == len(batch)
        times = [a.at for a in seen]
        gaps += [b - a for a, b in zip(times, times[1:], strict=False)]
        spans[sender] = times[-1] - times[0] if times else None
        first_after_start.append(times[0] - started if times else None)
    overruns = len(endpoint.overruns) - overruns_before
    errors = [type(r).__name__ for rs in results.values() for r in rs if not isinstance(r, Sent)]
    return {
        "senders": len(per_sender),
        "messages": sum(per_sender.values()),
        "per_sender": max(per_sender.values()),
        "all_at_once": all_at_once,
        "wall_s": wall,
        "theoretical_s": theoretical,
        "wall/theoretical": wall / theoretical,
        "arrival_span_s": max(s for s in spans.values() if s is not None),
        "gap_s": _spread(gaps),
        "first_arrival_after_start_s": max(x for x in first_after_start if x is not None),
        "overruns": overruns,
        "errors": len(errors),
        "every_message_accepted_once": accepted_once and not errors,
    }


def bench_sms(size: dict) -> dict:
    n = size["sms"]
    k = len(SENDERS)
    with SmsEndpoint(interval=1.0) as endpoint:
        one = send_round(endpoint, {ONE_SENDER: n}, all_at_once=False)
        many = send_round(endpoint, {s: max(2, n // k) for s in SENDERS}, all_at_once=True)
    runs = {"one_sender_one_by_one": one, f"{k}_senders_all_at_once": many}
    return {
        "unit": "seconds of wall time for N SMS at one per second per sender (lower is better; theoretical = "
        "(n-1) s per sender)",
        "runs": runs,
        "ratios": {f"{name} wall/theoretical": r["wall/theoretical"] for name, r in runs.items()},
        "targets": {
            "within 5% of theoretical": all(r["wall/theoretical"] <= 1.05 for r in runs.values()),
            "zero overruns": all(r["overruns"] == 0 for r in runs.values()),
            "every message accepted once": all(r["every_message_accepted_once"] for r in runs.values()),
        },
        "note": "theoretical = (n-1)/rate per sender, the longest sender: at exactly one per second the first "
        "message arrives at 0 s and the n-th at n-1 s. Wall time runs from the first send_sms call to the last "
        "answer, so it also holds a round trip before the first arrival and one per message (the pacer starts "
        "each request 1 s after the previous one's answer). One round per run (about a minute at S): the gaps "
        "between accepted arrivals per sender are reported instead of rounds.",
    }


if __name__ == "__main__":  # python -m bench.sms [N]: this case alone, printed as JSON
    import sys

    print(json.dumps(bench_sms({"sms": int(sys.argv[1]) if len(sys.argv) > 1 else 10}), indent=2))
