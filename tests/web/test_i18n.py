"""Translations (service/web/locale): the Japanese catalog is complete and in step with the sources, the
code labels cover every enum value, templates carry no visible text outside gettext, and the client's
reply page (/r/{token}) speaks the client's language with its style from a file (no inline style)."""

from __future__ import annotations

import re
from datetime import timedelta
from enum import Enum
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient
from jinja2 import Environment

from service import i18n as api_labels
from service.accounts.models import Language
from service.contacts.messaging.models import MessageChannel, MessageStatus, OutboxMessage, Purpose
from service.contacts.models import (
    Channel,
    ClientCategory,
    EmploymentType,
    FollowUpKind,
    FollowUpStatus,
    Party,
    PlacementStatus,
    SeparationReason,
)
from service.db import session_scope
from service.outcomes.models import CrisisSeverity, CrisisSignalKind, CrisisStatus, RiskSignal, StillEmployed
from service.web import i18n, labels
from service.web.render import environment
from tests.helpers import PASSWORD, sign_in_page
from tests.web.conftest import axe_violations, screenshot

ROOT = Path(__file__).resolve().parents[2]
LOCALE = ROOT / "service" / "web" / "locale"
REPLY = ROOT / "service" / "outcomes" / "templates" / "reply.html"
TEMPLATES = [REPLY, *sorted((ROOT / "service" / "web" / "templates").glob("*.html"))]
KEYWORDS = DEFAULT_KEYWORDS | {"NP_": ((1, "c"), 2)}  # as `make i18n` extracts


def _catalog(language: str):
    with (LOCALE / language / "LC_MESSAGES" / "messages.po").open("rb") as f:
        return read_po(f, locale=language)


def _source_messages() -> set[tuple[str | None, str]]:
    """Every message of the sources, extracted now with babel.cfg (what `make i18n` would write)."""
    with (ROOT / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)

    def in_service(path: str) -> bool:  # babel.cfg names service/ only: do not walk node_modules
        parts = Path(path).relative_to(ROOT).parts
        return parts[0] == "service" and not any(p.startswith((".", "_")) for p in parts)

    out = set()
    found = extract_from_dir(str(ROOT), method_map, options_map, keywords=KEYWORDS, directory_filter=in_service)
    for _file, _line, message, _comments, context in found:
        out.add((context, message if isinstance(message, str) else message[0]))
    return out


# -- the catalogs ---------------------------------------------------------------------------------


def test_every_japanese_message_is_translated_and_none_is_fuzzy():
    catalog = _catalog("ja")
    untranslated = [m.id for m in catalog if m.id and not (m.string if isinstance(m.string, str) else all(m.string))]
    fuzzy = [m.id for m in catalog if m.id and m.fuzzy]
    assert untranslated == [] and fuzzy == [], f"run `make i18n` and translate: {untranslated + fuzzy}"
    assert len([m for m in catalog if m.id]) > 250  # the real catalog, not an empty file


def test_the_catalogs_hold_every_message_of_the_sources():
    """A new _() in a template or in Python without `make i18n` (and a translation) fails here."""
    extracted = _source_messages()
    assert ("party", "client") in extracted and (None, "How is work going?") in extracted  # NP_ and reply.html
    for language in i18n.LANGUAGES:
        in_catalog = {(m.context, m.id if isinstance(m.id, str) else m.id[0]) for m in _catalog(language) if m.id}
        missing = extracted - in_catalog
        assert not missing, f"{language}: not in the catalog, run `make i18n`: {sorted(missing, key=str)}"


def test_placeholders_survive_translation():
    """The same %(name)s in a translation, and one that formats where it will be formatted: every template
    message (Jinja's newstyle gettext always applies %, so a bare % must be %%) and Python's python-format."""
    checked = 0
    for m in _catalog("ja"):
        if not (m.id and isinstance(m.id, str) and m.string):
            continue
        names = re.findall(r"%\((\w+)\)[sd]", m.id)
        assert sorted(names) == sorted(re.findall(r"%\((\w+)\)[sd]", m.string)), m.id
        if "python-format" in m.flags or any(path.endswith(".html") for path, _ in m.locations):
            values = dict.fromkeys(names, 1)
            assert "%" not in m.string % values or "%" in m.id % values, m.id
            checked += 1
    assert checked > 100


# -- code labels ----------------------------------------------------------------------------------

ENUMS: dict[str, type[Enum]] = {
    "party": Party,
    "channel": Channel,
    "kind": FollowUpKind,
    "follow_up_status": FollowUpStatus,
    "still_employed": StillEmployed,
    "risk_signal": RiskSignal,
    "crisis_signal": CrisisSignalKind,
    "separation_reason": SeparationReason,
    "crisis_severity": CrisisSeverity,
    "crisis_status": CrisisStatus,
    "employment_type": EmploymentType,
    "client_category": ClientCategory,
    "message_status": MessageStatus,
    "placement_status": PlacementStatus,
    "language": Language,
}


@pytest.mark.parametrize("kind", sorted(ENUMS))
def test_every_code_has_a_japanese_label(kind):
    codes = {e.value for e in ENUMS[kind]}
    assert set(labels.LABELS[kind]) >= codes, f"{kind}: no label for {codes - set(labels.LABELS[kind])}"
    ja = i18n.translations("ja")
    for code in codes:
        word = labels.label(ja, code, kind)
        assert word and word != code and re.search(r"[\u3040-\u30ff\u4e00-\u9fff]|SMS", word), (kind, code, word)


def test_message_channels_and_wellbeing_have_labels_too():
    assert {c.value for c in MessageChannel} <= set(labels.LABELS["channel"])
    assert set(labels.LABELS["wellbeing"]) == {"1", "2", "3", "4", "5"}


def test_the_pages_say_what_the_api_says_for_the_shared_words():
    """service/i18n.py (API, CLI) and the catalog (pages) give a code the same Japanese word."""
    ja = i18n.translations("ja")
    shared = [k for k in api_labels.LABELS if k.split(".")[0] in ("party", "channel", "kind", "crisis_severity",
                                                                  "crisis_status", "crisis_signal")]  # fmt: skip
    assert len(shared) > 40
    for key in shared:
        kind, code = key.split(".", 1)
        assert labels.label(ja, code, kind) == api_labels.LABELS[key]["ja"], key


def test_the_label_filter_translates_enums_and_codes_and_shows_an_unknown_code_as_it_is():
    ja, en = environment("ja"), environment("en")
    template = '{{ reason|label("separation_reason") }}/{{ 4|label("wellbeing") }}/{{ "zz"|label("party") }}'
    assert ja.from_string(template).render(reason=SeparationReason.voluntary) == "自己都合の退職/4（良い）/zz"
    assert en.from_string(template).render(reason="voluntary") == "quit (own decision)/4 (good)/zz"
    # "other" is one word in English, translated in the context of its own list.
    assert ja.from_string('{{ "health"|label("separation_reason") }}').render() == "健康上の理由"
    assert ja.from_string('{{ "health"|label("risk_signal") }}').render() == "体調"


def test_the_pages_show_words_not_codes(api, http):
    """The client page and the new placement form, in Japanese: statuses, reasons and lists in words."""
    client = api.client("a.worker", name="表示 一郎")
    placement = api.placement("a.worker", start="2026-04-17", client=client)
    c = TestClient(http.app, follow_redirects=False)
    assert sign_in_page(c, "worker@a.example.jp", PASSWORD).status_code == 303
    page = c.get(f"/clients/{client['id']}").text
    timeline = page.split('<ol class="timeline">', 1)[1].split("</ol>", 1)[0]
    assert '<span class="status">予定' in timeline and ">pending<" not in timeline
    assert '<option value="voluntary">自己都合の退職</option>' in page
    assert '<option value="contract_ended">契約期間の満了</option>' in page
    form = c.get("/placements/new").text
    assert ">被保護者</option>" in form and ">一般就労</option>" in form and ">general</option>" not in form
    first = api.follow_ups("a.worker", placement["id"])[0]
    outcome = c.get(f"/follow-ups/{first['id']}/outcome")
    assert ">3（ふつう）</option>" in outcome.text and "> 退職の意向</label>" in outcome.text


# -- no visible text outside gettext ---------------------------------------------------------------

# Words deliberately not translated: each language's own name on the language switch.
NOT_TRANSLATED = {"English", "日本語"}
VISIBLE_ATTRIBUTES = ("title", "alt", "placeholder", "aria-label")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_data(self, data: str) -> None:
        self.found.append(data)

    def handle_starttag(self, tag, attrs) -> None:
        self.found += [v or "" for k, v in attrs if k in VISIBLE_ATTRIBUTES]


def _visible_literal_text(path: Path) -> list[str]:
    """The template's own words: its text outside Jinja tags, with the markup taken out."""
    env = Environment(extensions=["jinja2.ext.i18n"])
    source = path.read_text()
    data = "".join(
        value if token == "data" else " X " for _line, token, value in env.lex(source)
    )  # every {{ }} / {% %} becomes a placeholder word
    parser = _Text()
    parser.feed(data)
    words = []
    for chunk in parser.found:
        for word in re.split(r"[\s·:–—()（）|/,.!?]+|X", chunk):
            if word and re.search(r"[A-Za-z\u3040-\u30ff\u4e00-\u9fff]", word) and word not in NOT_TRANSLATED:
                words.append(word)
    return words


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_templates_show_no_words_outside_gettext(path):
    assert _visible_literal_text(path) == []


def test_the_check_finds_a_word_outside_gettext(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<p title="Hello">{{ _("ok") }} お返事 <b>Thanks</b></p>{% if x %}{{ y }}{% endif %}')
    assert _visible_literal_text(bad) == ["Hello", "お返事", "Thanks"]


# -- the reply page in Japanese and English ---------------------------------------------------------


def _reply_link(api, app, factory, clock, *, language: str, answered: bool = False) -> str:
    """A client's check-in message written in ``language`` and its signed reply link."""
    client = api.client("a.worker", name="返信 花子", language=language, email="hanako@example.jp")
    with session_scope(factory) as s:
        row = OutboxMessage(
            idempotency_key=f"test:i18n:{language}:{answered}", office_id=api.world.office_a,
            purpose=Purpose.check_in, channel=MessageChannel.email, client_id=client["id"],
            to_address="hanako@example.jp", language=language, body="x", status=MessageStatus.sent,
            next_attempt_at=clock.now() - timedelta(hours=1),
            answered_at=clock.now() if answered else None,
        )  # fmt: skip
        s.add(row)
        s.flush()
        outbox_id = row.id
    return app.state.messaging.links.token(outbox_id)


JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def _main(html: str) -> str:
    return html.split("<main>", 1)[1].split("</main>", 1)[0]


def _assert_linked_style_only(html: str) -> None:
    assert '<link rel="stylesheet" href="/static/reply.css">' in html
    assert "<style" not in html and " style=" not in html and "<script" not in html


def test_the_reply_page_speaks_english_to_an_english_speaking_client(api, app, factory, clock):
    token = _reply_link(api, app, factory, clock, language="en")
    page = api.http.get(f"/r/{token}")
    assert page.status_code == 200 and '<html lang="en">' in page.text
    _assert_linked_style_only(page.text)
    for words in (
        "How is work going?", "Doing well", "Some worries", "Struggling", "Please call me",
        "A few words (optional)", "If you want to talk, call us any time", "Stop automated messages",
    ):  # fmt: skip
        assert words in page.text, words
    assert "<title>Your answer – Office A</title>" in page.text
    assert not JAPANESE.search(_main(page.text)), _main(page.text)  # no Japanese left on the English page

    ask = api.http.post(f"/r/{token}/stop")
    assert ask.status_code == 200
    _assert_linked_style_only(ask.text)
    assert "Stop automated messages (SMS, e-mail and automated calls)?" in ask.text
    assert "Yes, stop them" in ask.text and "No, go back" in ask.text
    assert not JAPANESE.search(_main(ask.text))

    used = api.http.get(f"/r/{_reply_link(api, app, factory, clock, language='en', answered=True)}")
    assert used.status_code == 410 and "This link has already been used." in used.text
    assert "0126-22-1001" in used.text  # the office's phone, as in Japanese


def test_the_reply_page_speaks_japanese_by_default(api, app, factory, clock):
    token = _reply_link(api, app, factory, clock, language="ja")
    page = api.http.get(f"/r/{token}", headers={"Accept-Language": "en"})  # the client's language, not the browser's
    assert page.status_code == 200 and '<html lang="ja">' in page.text
    _assert_linked_style_only(page.text)
    for words in (
        "お仕事の様子はいかがですか？", "順調です", "少し心配なことがある", "つらい", "電話がほしい",
        "ひとこと（書かなくてもかまいません）", "話したいときは、いつでもお電話ください", "配信停止",
    ):  # fmt: skip
        assert words in page.text, words
    assert "How is work going?" not in page.text and "<title>お返事 – Office A</title>" in page.text


# -- in Chromium: the style file applies under the CSP, with no violation ---------------------------


@pytest.mark.parametrize(
    ("language", "question"), [("ja", "お仕事の様子はいかがですか？"), ("en", "How is work going?")]
)
def test_the_reply_page_is_styled_under_the_csp_at_320px(live_server, browser, api, app, factory, clock,
                                                         language, question):  # fmt: skip
    token = _reply_link(api, app, factory, clock, language=language)
    context = browser.new_context(locale="ja-JP", viewport={"width": 320, "height": 640})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    styles: list[int] = []
    failed: list[str] = []
    page.on("response", lambda r: styles.append(r.status) if r.url.endswith("/static/reply.css") else None)
    # The browser's own favicon request is not the page's: the page links nothing but its style file.
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 and "favicon" not in r.url else None)
    try:
        response = page.goto(f"{live_server}/r/{token}")
        assert response.status == 200
        page.wait_for_load_state("load")
        assert page.locator("h1").inner_text() == question
        assert styles == [200]
        # The file's rules are in force: full-width answer buttons 3.5rem high, the page no wider than the screen.
        button = page.locator("form button[name='answer']").first
        box = button.bounding_box()
        assert box is not None and box["width"] >= 320 - 2 * 16 - 1 and box["height"] >= 56
        assert page.evaluate("() => getComputedStyle(document.body).maxWidth") == "576px"  # 36rem
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 320
        assert failed == []
        problems = [p for p in problems if not p.startswith("Failed to load resource")]  # the favicon
        assert problems == [], problems  # a blocked style or script would show here ("Refused to apply ...")
        assert axe_violations(page) == []
        screenshot(page, f"client-reply-{language}")
    finally:
        context.close()
