"""SMS pacing per sender: the real ``TwilioAdapter`` (real ``twilio`` client, real HTTP) against
``bench.sms.SmsEndpoint``, a loopback server that answers Twilio's Messages resource and refuses,
with Twilio's 429, a message arriving less than 1 s after the previous one from the same sender.

Times are the endpoint's arrival stamps, not the client's wall clock; only lower bounds are asserted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench.sms import SmsEndpoint, adapter, sms
from service.contacts.messaging.ports import Sent, TransientError

SERVICE_SID = "MG" + "0a1b2c3d4e5f6071" * 2


@pytest.fixture
def endpoint() -> Iterator[SmsEndpoint]:
    with SmsEndpoint(interval=1.0) as e:
        yield e


async def all_at_once(*sends) -> list:
    return await asyncio.gather(*sends)


def test_one_sender_is_never_sent_faster_than_once_a_second_even_from_two_adapters(endpoint):
    """Four messages started at once, from two adapters sharing one number: Twilio counts per
    sender, so they queue behind each other and arrive at least 1 s apart, with no 429."""
    sender = "+15005550101"
    a, b = adapter(endpoint, sender), adapter(endpoint, sender)
    results = asyncio.run(all_at_once(a.send_sms(sms(1)), b.send_sms(sms(2)), a.send_sms(sms(3)), b.send_sms(sms(4))))
    assert endpoint.overruns == []
    seen = endpoint.accepted[sender]
    assert sorted(a.outbox_id for a in seen) == ["1", "2", "3", "4"]  # each accepted once
    assert sorted(r.provider_id for r in results) == sorted(a.sid for a in seen)
    assert all(r.provider_id.startswith("SM") and len(r.provider_id) == 34 for r in results)
    assert min(endpoint.gaps(sender)) >= 1.0
    assert seen[-1].at - seen[0].at >= 3.0  # N-1 seconds at least


def test_two_senders_do_not_wait_for_each_other(endpoint):
    """A number and a messaging service, three messages each, all started at once: each sender
    keeps its own pace, side by side (about 2 s in all, where one after the other takes 5 s)."""
    number, service = adapter(endpoint, "+15005550102"), adapter(endpoint, SERVICE_SID)
    results = asyncio.run(all_at_once(*(x.send_sms(sms(i)) for i in range(3) for x in (number, service))))
    assert all(isinstance(r, Sent) for r in results)
    assert endpoint.overruns == []
    first, second = endpoint.accepted["+15005550102"], endpoint.accepted[SERVICE_SID]
    assert len(first) == len(second) == 3
    for sender in (first, second):
        assert min(b.at - a.at for a, b in zip(sender, sender[1:], strict=False)) >= 1.0
    # Interleaved: each sender's first message arrived before the other's second one ...
    assert first[0].at < second[1].at and second[0].at < first[1].at
    # ... so all six took well under the 5 s that one shared pace would need.
    arrivals = [a.at for a in first + second]
    assert max(arrivals) - min(arrivals) < 4.0


def test_the_endpoint_refuses_a_sender_that_goes_too_fast(endpoint):
    """So that "no overrun" above means something: paced at 4 per second, the second message
    arrives a quarter of a second after the first and gets Twilio's 429, which is a transient error."""
    sender = "+15005550103"
    fast = adapter(endpoint, sender, rate=4.0)

    async def two() -> tuple[Sent, BaseException | Sent]:
        first = await fast.send_sms(sms(1))
        try:
            return first, await fast.send_sms(sms(2))
        except TransientError as exc:
            return first, exc

    first, second = asyncio.run(two())
    assert isinstance(first, Sent)
    assert isinstance(second, TransientError) and second.code == "20429"
    assert [a.outbox_id for a in endpoint.overruns] == ["2"]
    assert [a.outbox_id for a in endpoint.accepted[sender]] == ["1"]
