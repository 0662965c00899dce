"""SMTP PIPELINING (RFC 2920) in the SmtpAdapter, against the aiosmtpd sink.

Where the server offers PIPELINING, MAIL FROM, RCPT TO and DATA go out in one write and the content
after DATA's 354: the server takes two reads a message instead of four (one per round trip), and one
when the next message's turn has come as a content goes out (its commands follow the content). What
each message comes to (sent; refused for good; refused for now; never tried) is the same either
way, which the tests here check side by side, with the sink offering PIPELINING and without it.

Every test runs on asyncio's own event loop and on uvloop, which uvicorn runs the service on: uvloop
takes a protocol's ``data_received`` once, when the connection is made, and pipelining once heard no
answer there at all (each message waited out the timeout; a dispatch tick seemed to hang).
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from service.contacts.messaging.ports import Email, MaybeSent, NotTried, PermanentError, Sent, TransientError
from service.contacts.messaging.smtp import RateLimiter, SmtpAdapter
from service.settings import Settings
from tests.conftest import ROOT, TEST_SECRET
from tests.contacts.smtp_sink import SINK_LOGIN, secure_settings, smtp_sink

BODY = "お仕事の様子はいかがですか？\n.\n行頭の点も、そのまま届きます。\n"
PATHS = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def event_loop_kind(request):
    """The adapter's event loop (``asyncio.run``), and the sink's: asyncio's own, or uvloop."""
    if request.param == "asyncio":
        yield request.param
        return
    uvloop = pytest.importorskip("uvloop")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield request.param
    finally:
        asyncio.set_event_loop_policy(None)


def adapter(port: int, *, tls: bool = False, **kw) -> SmtpAdapter:
    secure = {}
    if tls:
        s = secure_settings()
        secure = {"starttls": True, "ca_file": s["smtp_ca_file"], "username": SINK_LOGIN[0], "password": SINK_LOGIN[1]}
    kw.setdefault("timeout", 5.0)  # a test that goes wrong waits this long for an answer, not 15 s
    a = SmtpAdapter(host="127.0.0.1", port=port, sender="office@example.jp", pool_size=1, **secure, **kw)
    a.limiter = RateLimiter(1e6)  # not paced: these tests are about what is said, not when
    return a


def emails(*to: str) -> list[Email]:
    return [Email(i + 1, address, "お仕事の様子", BODY) for i, address in enumerate(to)]


def send(a: SmtpAdapter, *batches: list[Email]) -> list[list]:
    """Each batch after the other in one event loop (the sessions stay open between them), then QUIT."""

    async def run() -> list[list]:
        out = [await a.send_batch(batch) for batch in batches]
        await a.aclose()
        return out

    return asyncio.run(run())


def shape(results: list) -> list[tuple[str, str | None]]:
    return [(type(r).__name__, None if isinstance(r, Sent) else r.code) for r in results]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
@pytest.mark.parametrize(
    ("offered", "rate", "reads_per_message"),
    [(True, None, 2), (True, 5.0, 2), (False, None, 4)],
    ids=["offered", "offered-paced", "not-offered"],
)
def test_mail_rcpt_and_data_go_in_one_write_where_the_server_offers_pipelining(offered, rate, reads_per_message, tls):
    # Offered, with the next message's turn come by the time a content goes out (the rate not in the
    # way), the next one's commands follow the content in the same write: one read a message, and
    # one more for the last content. Paced (5 a second), each message waits for its turn: two reads.
    with smtp_sink(tls=tls, pipelining=offered) as (sink, port):
        a = adapter(port, tls=tls)
        if rate:
            a.limiter = RateLimiter(rate)
        [results] = send(a, emails("c0@example.jp", "c1@example.jp", "c2@example.jp"))
        assert shape(results) == [("Sent", None)] * 3
        assert a.connections == 1 and sink.connections == 1

        reads = sink.reads_from(sink.sessions[0])
        assert reads[-1] == b"QUIT\r\n"
        commands = [b"MAIL", b"RCPT", b"DATA"]
        if offered and not rate:  # chained: the envelope, then each content with the next envelope
            took = reads[:-1]
            assert len(took) == 3 + 1
            assert [line.split(b" ")[0] for line in took[0].splitlines()] == commands
            for i in (1, 2):
                content, envelope = took[i].split(b"\r\n.\r\n")
                assert [line.split(b" ")[0] for line in envelope.splitlines()] == commands
                assert envelope.endswith(b"DATA\r\n") and f"TO:<c{i}@example.jp>".encode() in envelope
                assert f"To: c{i - 1}@example.jp".encode() in content
            assert took[-1].endswith(b"\r\n.\r\n") and b"To: c2@example.jp" in took[-1]
        per_message = reads[:-1]
        for i in range(3) if rate or not offered else ():
            took = per_message[i * reads_per_message : (i + 1) * reads_per_message]
            if offered:  # the envelope and DATA in one read, then the content
                assert [line.split(b" ")[0] for line in took[0].splitlines()] == commands
                assert took[0].endswith(b"DATA\r\n") and f"TO:<c{i}@example.jp>".encode() in took[0]
            else:
                assert [r.split(b" ")[0].rstrip(b"\r\n") for r in took[:3]] == commands
            assert took[-1].endswith(b"\r\n.\r\n")
        if rate or not offered:
            assert len(per_message) == 3 * reads_per_message  # one read per round trip
    # Arrived whole, in order, the leading dot unescaped and the Japanese text intact.
    assert [r.rcpt_tos for r in sink.received] == [[f"c{i}@example.jp"] for i in range(3)]
    assert [r.outbox_id for r in sink.received] == [1, 2, 3]
    assert all(r.message.get_content().replace("\r\n", "\n") == BODY for r in sink.received)
    assert {r.message["Message-ID"] for r in sink.received} == {r.provider_id for r in results}


@PATHS
def test_answers_cut_across_reads_are_each_paired_with_their_command(pipelining):
    # Every answer arrives in two reads ("25", then "0 OK"), a moment apart: each is put together and
    # taken for its own command, the refusal for the refused address, the 250s for the others.
    codes = {"gone@example.jp": "550 5.1.1 No such user"}
    with smtp_sink(rcpt_codes=codes, split_answers=True) as (sink, port):
        a = adapter(port, pipelining=pipelining)
        [first, second] = send(a, emails("c0@example.jp", "gone@example.jp"), emails("c2@example.jp", "c3@example.jp"))
        assert shape(first + second) == [("Sent", None), ("PermanentError", "550"), ("Sent", None), ("Sent", None)]
        assert a.connections == 1 and sink.connections == 1
        assert [r.rcpt_tos for r in sink.received] == [["c0@example.jp"], ["c2@example.jp"], ["c3@example.jp"]]
        reads = sink.reads_from(sink.sessions[0])
        assert sum(r.count(b"MAIL FROM:") for r in reads) == 4
        assert all(r.endswith(b"DATA\r\n") == pipelining for r in reads if b"MAIL FROM:" in r)


@PATHS
def test_a_server_gone_quiet_mid_exchange_holds_the_batch_no_longer_than_the_timeout(pipelining):
    # The server takes MAIL FROM, then says nothing for longer than the adapter waits: the message was
    # never handed over (tried again at the next dispatch), the rest of the batch is untried, and the
    # batch is over in about the timeout. The next batch goes out on a new session.
    with smtp_sink(rcpt_delay=3.0) as (sink, port):
        a = adapter(port, pipelining=pipelining, timeout=0.5)

        async def run() -> tuple[list, float, list]:
            started = time.monotonic()
            first = await a.send_batch(emails("c0@example.jp", "c1@example.jp"))
            took = time.monotonic() - started
            sink.rcpt_delay = 0.0
            second = await a.send_batch(emails("c0@example.jp", "c1@example.jp"))
            await a.aclose()
            return first, took, second

        first, took, second = asyncio.run(run())
        assert shape(first) == [("TransientError", "disconnected"), ("NotTried", "disconnected")]
        assert took < 2.0  # 0.5 s, and time to close the session (not the server's 3 s)
        assert shape(second) == [("Sent", None)] * 2
        assert a.connections == 2
        assert [r.rcpt_tos for r in sink.received] == [["c0@example.jp"], ["c1@example.jp"]]


@pytest.mark.parametrize(("env", "reads_per_message"), [(None, 2), ("false", 4)], ids=["default", "turned-off"])
def test_the_service_pipelines_by_default_and_a_setting_turns_it_off(env, reads_per_message, monkeypatch):
    if env is not None:
        monkeypatch.setenv("TEICHAKU_SMTP_PIPELINING", env)
    else:
        monkeypatch.delenv("TEICHAKU_SMTP_PIPELINING", raising=False)
    with smtp_sink() as (sink, port):
        settings = Settings(environment="test", database_url="sqlite://", secret_key=TEST_SECRET,
                            config_dir=ROOT / "config", smtp_host="127.0.0.1", smtp_port=port,
                            smtp_from="office@example.jp")  # fmt: skip
        a = SmtpAdapter.from_settings(settings)
        assert a.pipelining is (env is None)
        [results] = send(a, emails("c0@example.jp"))
        assert shape(results) == [("Sent", None)]
        assert len(sink.reads_from(sink.sessions[0])) == reads_per_message + 1  # and QUIT


@PATHS
def test_refused_addresses_come_out_the_same_and_the_session_goes_on(pipelining):
    codes = {"gone@example.jp": "550 5.1.1 No such user", "busy@example.jp": "451 4.3.0 Try again later"}
    with smtp_sink(rcpt_codes=codes, pipelining=pipelining) as (sink, port):
        a = adapter(port)
        [results] = send(a, emails("c0@example.jp", "gone@example.jp", "c2@example.jp", "busy@example.jp", "c4@a.jp"))
        assert shape(results) == [("Sent", None), ("PermanentError", "550"), ("Sent", None),
                                  ("TransientError", "451"), ("Sent", None)]  # fmt: skip
        assert results[1].reason == "the address was refused by the mail server"
        assert a.connections == 1  # a refusal does not cost the session
        assert sorted(sink.refused) == sorted(codes.items())
        assert [r.rcpt_tos[0] for r in sink.received] == ["c0@example.jp", "c2@example.jp", "c4@a.jp"]
        reads = sink.reads_from(sink.sessions[0])
        # After each refusal the envelope is reset (RSET), as aiosmtplib's sendmail does.
        assert reads.count(b"RSET\r\n") == 2
        if pipelining:  # DATA went with the refused RCPT TO, was refused in turn (503), and nothing more
            refused_group = next(r for r in reads if b"TO:<gone@example.jp>" in r)
            assert refused_group.endswith(b"DATA\r\n")
            assert reads[reads.index(refused_group) + 1] == b"RSET\r\n"


@PATHS
def test_a_421_stops_the_batch_and_what_followed_was_never_tried(pipelining):
    codes = {"c1@example.jp": ["421 4.7.0 Too many messages, closing connection"]}
    with smtp_sink(rcpt_codes=codes, pipelining=pipelining) as (sink, port):
        a = adapter(port)
        [results] = send(a, emails("c0@example.jp", "c1@example.jp", "c2@example.jp", "c3@example.jp"))
        assert shape(results) == [("Sent", None), ("TransientError", "421"), ("NotTried", "421"), ("NotTried", "421")]
        assert [r.rcpt_tos for r in sink.received] == [["c0@example.jp"]]
        assert a.idle_sessions == 0


async def drop_session(sink, how: str, at_next_mail: str) -> None:
    """The session kept from the last batch goes: the server hangs up now ("hang_up"), or answers
    the next MAIL FROM with ``at_next_mail`` ("" closes the line without a word)."""
    if how == "hang_up":
        await asyncio.to_thread(sink.hang_up)
        await asyncio.sleep(0.1)
    else:
        sink.at_next_mail = at_next_mail


@PATHS
@pytest.mark.parametrize("how", ["hang_up", "silently_at_next_mail", "421_at_next_mail"])
def test_a_session_dropped_between_batches_is_reopened_and_the_message_sent_once(pipelining, how):
    with smtp_sink(pipelining=pipelining) as (sink, port):
        a = adapter(port)

        async def run() -> list[list]:
            first = await a.send_batch(emails("c0@example.jp"))
            await drop_session(sink, how, "421 4.4.2 Idle too long" if how.startswith("421") else "")
            second = await a.send_batch([Email(2, "c1@example.jp", "お仕事の様子", BODY)])
            await a.aclose()
            return [first, second]

        first, second = asyncio.run(run())
        assert shape(first + second) == [("Sent", None), ("Sent", None)]
        assert a.connections == 2 and sink.connections == 2
        assert sorted(sink.outbox_ids()) == [1, 2]  # each exactly once


def test_while_a_dropped_session_is_reopened_no_other_is_opened_beyond_the_pool():
    # The session being reopened counts toward the pool while it opens (slowly, here): the batch's next
    # message waits for it rather than opening a second session beside it (a pool of one).
    with smtp_sink(tls=True) as (sink, port):
        a = adapter(port, tls=True)
        a.limiter = RateLimiter(50.0)  # the next message's turn comes while the first's session reopens

        async def run() -> list:
            first = await a.send_batch(emails("c0@example.jp"))
            sink.at_next_mail = ""
            sink.ehlo_delay = 0.3
            second = await a.send_batch([Email(i, f"c{i}@example.jp", "お仕事の様子", BODY) for i in (2, 3, 4)])
            await a.aclose()
            return first + second

        assert shape(asyncio.run(run())) == [("Sent", None)] * 4
        assert a.connections == 2 and sink.connections == 2
        assert sorted(sink.outbox_ids()) == [1, 2, 3, 4]


@PATHS
def test_a_message_cut_off_in_its_content_is_maybe_sent_and_the_rest_untried(pipelining):
    with smtp_sink(pipelining=pipelining, hang_up_in_data={"c1@example.jp"}) as (sink, port):
        a = adapter(port)
        [results] = send(a, emails("c0@example.jp", "c1@example.jp", "c2@example.jp"))
        assert shape(results) == [("Sent", None), ("MaybeSent", "disconnected"), ("NotTried", "disconnected")]
        assert isinstance(results[1], MaybeSent)
        assert sink.outbox_ids() == [1, 2]  # c1 did arrive: "maybe sent" is right not to send it again
        if pipelining:  # c2's commands went with c1's content; its own content never did
            reads = sink.reads_from(sink.sessions[0])
            assert any(b"To: c1@example.jp" in r and b"TO:<c2@example.jp>" in r for r in reads)


@PATHS
def test_a_refused_content_is_that_messages_own_and_the_message_sent_with_it_goes_on(pipelining):
    # c1's content is refused (554); c2's commands went out with that content: the refusal is c1's,
    # c2 and c3 are sent, on the same session, and nothing is sent twice.
    with smtp_sink(pipelining=pipelining, data_answers={"c1@example.jp": "554 5.6.0 Message refused"}) as (sink, port):
        a = adapter(port)
        [results] = send(a, emails("c0@example.jp", "c1@example.jp", "c2@example.jp", "c3@example.jp"))
        assert shape(results) == [("Sent", None), ("PermanentError", "554"), ("Sent", None), ("Sent", None)]
        assert a.connections == 1 and sink.connections == 1
        assert sink.outbox_ids() == [1, 3, 4]
        assert sink.refused == [("c1@example.jp", "554 5.6.0 Message refused")]
        if pipelining:
            reads = sink.reads_from(sink.sessions[0])
            assert any(b"To: c1@example.jp" in r and r.endswith(b"TO:<c2@example.jp>\r\nDATA\r\n") for r in reads)


@PATHS
def test_a_421_to_a_content_leaves_the_message_sent_with_it_untried(pipelining):
    # c1's content is answered 421 and the line closed; c2's commands had gone with that content, its
    # own content never did: c1 is refused for now, c2 and c3 were never handed over.
    with smtp_sink(pipelining=pipelining, data_answers={"c1@example.jp": "421 4.3.2 Shutting down"}) as (sink, port):
        a = adapter(port)
        [results] = send(a, emails("c0@example.jp", "c1@example.jp", "c2@example.jp", "c3@example.jp"))
        assert shape(results) == [("Sent", None), ("TransientError", "421"), ("NotTried", "421"), ("NotTried", "421")]
        assert sink.outbox_ids() == [1]
        assert a.idle_sessions == 0
        if pipelining:
            reads = sink.reads_from(sink.sessions[0])
            assert any(b"To: c1@example.jp" in r and b"TO:<c2@example.jp>" in r for r in reads)


@PATHS
def test_a_message_whose_content_gets_an_unreadable_answer_is_maybe_sent_and_never_sent_again(pipelining):
    # The content went over and the answer to it is no SMTP answer: it may have been taken, so it is
    # "maybe sent" (never sent again), and the session, out of step with its answers, is not used again.
    with smtp_sink(pipelining=pipelining, garble_data_answer={"c1@example.jp"}) as (sink, port):
        a = adapter(port)
        [first, second] = send(a, emails("c0@example.jp", "c1@example.jp", "c2@example.jp"), emails("c3@example.jp"))
        assert shape(first) == [("Sent", None), ("MaybeSent", "unreadable"), ("NotTried", "disconnected")]
        assert shape(second) == [("Sent", None)]
        assert a.connections == 2
        assert sink.outbox_ids() == [1, 2, 1]  # c1 arrived once; the second batch's first is c3
        if pipelining:  # c2's commands went with c1's content; its own content never did
            reads = sink.reads_from(sink.sessions[0])
            assert any(b"To: c1@example.jp" in r and b"TO:<c2@example.jp>" in r for r in reads)


def test_a_server_that_takes_data_after_refusing_every_recipient_gets_an_empty_end_and_nothing_is_sent():
    # RFC 2920 asks a server to refuse DATA when no recipient was taken (aiosmtpd says 503). One that
    # says 354 all the same is sent the end of an empty message, never the content.
    with smtp_sink(rcpt_codes={"gone@example.jp": "550 5.1.1 No such user"}) as (sink, port):

        async def refuse_but_keep(server, session, envelope, address, rcpt_options):
            envelope.rcpt_tos.append(address)  # kept, so aiosmtpd's DATA answers 354
            sink.refused.append((address, "550"))
            return "550 5.1.1 No such user"

        sink.handle_RCPT = refuse_but_keep
        a = adapter(port)
        [results] = send(a, emails("gone@example.jp"))
        assert shape(results) == [("PermanentError", "550")]
        assert [r.content for r in sink.received] == [b""]  # the empty end; no content of ours
        reads = sink.reads_from(sink.sessions[0])
        assert reads[:3] == [reads[0], b".\r\n", b"RSET\r\n"] and reads[0].endswith(b"DATA\r\n")


def test_without_pipelining_in_the_adapter_it_speaks_one_command_at_a_time():
    with smtp_sink() as (sink, port):
        a = adapter(port, pipelining=False)
        [results] = send(a, emails("c0@example.jp"))
        assert shape(results) == [("Sent", None)]
        assert len(sink.reads_from(sink.sessions[0])) == 4 + 1  # MAIL, RCPT, DATA, content; QUIT


# ------------------------------------------------------------------ a refused sign-in


@pytest.mark.parametrize("how", ["hang_up", "at_next_mail"])
@pytest.mark.parametrize("answer", ["535 5.7.8 Authentication credentials invalid", "530 5.7.0 Not allowed"])
def test_a_sign_in_refused_on_reopening_mid_batch_leaves_the_e_mails_untried_and_logs_an_error(answer, how, caplog):
    # The session kept from the last batch was dropped (seen before the batch's first message, or only
    # when it was sent); the new one's sign-in is refused (the password was changed): no e-mail is at
    # fault and none fails for good (that would make them all phone calls for the workers). They stay
    # queued, no attempt counted, and the log says what to fix.
    with smtp_sink(tls=True) as (sink, port):
        a = adapter(port, tls=True)
        caplog.set_level(logging.WARNING, logger="service.contacts.messaging.smtp")

        async def run() -> list[list]:
            first = await a.send_batch(emails("c0@example.jp"))
            await drop_session(sink, how, "")
            sink.auth_answer = answer
            second = await a.send_batch(emails("taro.yamada@example.jp", "c2@example.jp", "c3@example.jp"))
            await a.aclose()
            return [first, second]

        first, second = asyncio.run(run())
        code = answer[:3]
        assert shape(first) == [("Sent", None)]
        assert shape(second) == [("NotTried", code)] * 3
        assert all(isinstance(r, NotTried) and not isinstance(r, PermanentError) for r in second)
        assert sink.outbox_ids() == [1]
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and all("sign-in" in r.getMessage() for r in errors)
        logged = " ".join(r.getMessage() for r in caplog.records)
        for private in ("taro.yamada", "example.jp", SINK_LOGIN[0], SINK_LOGIN[1]):
            assert private not in logged


def test_a_sign_in_refused_for_now_stays_a_temporary_failure():
    with smtp_sink(tls=True, auth_answer="454 4.7.0 Temporary authentication failure") as (sink, port):
        [results] = send(adapter(port, tls=True), emails("c0@example.jp", "c1@example.jp"))
        assert shape(results) == [("NotTried", "454")] * 2
        assert all(isinstance(r, TransientError) for r in results)
        assert sink.received == []


def test_a_message_built_with_the_kept_header_classes_is_byte_for_byte_the_standard_librarys(monkeypatch):
    # The adapter's policy only keeps the header classes the standard library makes anew each time,
    # and the headers it made last (by name and text), which messages then share.
    import email.policy
    import re
    from email.headerregistry import Address
    from email.message import EmailMessage
    from email.utils import parseaddr

    from aiosmtplib.email import flatten_message

    from service.contacts.messaging import smtp

    a = adapter(1)
    a.sender = "岩見沢市 就労支援 <office@example.jp>"
    e = Email(7, "山田 太郎 <taro@example.jp>", "お仕事の様子 " * 8, BODY * 20, html="<p>お仕事の様子</p>")
    ours = [flatten_message(a._message(e)) for _ in range(2)]  # the second with the classes and headers kept
    monkeypatch.setattr(smtp, "_POLICY", email.policy.default)
    standard = adapter(1)
    standard.sender = a.sender
    theirs = flatten_message(standard._message(e))

    def same(b: bytes) -> bytes:  # but for the date, the Message-ID and the MIME boundary
        return re.sub(rb"(Date|Message-ID): [^\r\n]*|=+\d+==", b"", b)

    assert same(ours[0]) == same(ours[1]) == same(theirs)
    assert b"X-Teichaku-Outbox: 7" in ours[1] and b"=?utf-8?" in ours[1]
    monkeypatch.undo()  # the adapter's own policy again
    assert parseaddr(str(a._message(e)["From"])) == ("岩見沢市 就労支援", "office@example.jp")
    a.sender = "Teichaku <other@example.jp>"  # a new sender is taken up at once, not the kept one
    assert parseaddr(str(a._message(e)["From"])) == ("Teichaku", "other@example.jp")

    # Shared, not copied: the same header object in two messages, and changing one message's header
    # (which puts a new object in its place) leaves the other's as it was.
    first, second = a._message(e), a._message(Email(8, "c8@example.jp", e.subject, BODY))
    assert first["Subject"] is second["Subject"] and first["From"] is second["From"]
    assert first["To"] is not second["To"] and first["Message-ID"] != second["Message-ID"]
    text = next(p for p in (second, *second.iter_parts()) if p.get_content_type() == "text/plain")
    text.set_param("charset", "iso-2022-jp")
    first_text = next(p for p in first.iter_parts() if p.get_content_type() == "text/plain")
    assert (text.get_content_charset(), first_text.get_content_charset()) == ("iso-2022-jp", "utf-8")
    assert b'charset="utf-8"' in flatten_message(a._message(e))
    # A header given as objects, not text, is made as the standard library makes it.
    given = EmailMessage(policy=smtp._POLICY)
    given["To"] = [Address("山田 太郎", "taro", "example.jp"), Address(addr_spec="b@example.jp")]
    assert str(given["To"]) == "山田 太郎 <taro@example.jp>, b@example.jp"
