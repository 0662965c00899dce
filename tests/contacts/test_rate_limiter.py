"""The SMTP send rate (``RateLimiter``) on a virtual clock: where each send's turn falls, exactly,
whatever the machine's load (the e-mail tests against the sink check the pacing end to end, by
lower bounds only)."""

from __future__ import annotations

import asyncio

import pytest

from service.contacts.messaging.smtp import RateLimiter


class VirtualTime:
    """A clock that moves only when the test moves it. A waiter's sleep is recorded as the
    instant it would wake (its turn) and returns at once."""

    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now


def limiter(rate: float) -> tuple[RateLimiter, VirtualTime]:
    t = VirtualTime()
    turns: list[float] = []

    async def sleep(seconds: float) -> None:
        assert seconds > 0
        turns.append(t.now + seconds)

    lim = RateLimiter(rate, clock=t.clock, sleep=sleep)
    lim.turns = turns  # type: ignore[attr-defined]
    return lim, t


def turn(lim: RateLimiter, t: VirtualTime) -> float:
    """One send: wait for its turn, then the clock is at it (the send happens then)."""
    slept = len(lim.turns)  # type: ignore[attr-defined]
    asyncio.run(lim.wait())
    if len(lim.turns) > slept:  # type: ignore[attr-defined]
        t.now = lim.turns[-1]  # type: ignore[attr-defined]
    return t.now


def test_waiters_arriving_together_get_turns_one_interval_apart_in_the_order_they_asked():
    lim, t = limiter(5.0)
    got: list[tuple[int, float]] = []

    async def send(n: int) -> None:
        asked = len(lim.turns)  # type: ignore[attr-defined]
        await lim.wait()
        got.append((n, lim.turns[asked] if len(lim.turns) > asked else t.now))  # type: ignore[attr-defined]

    async def burst() -> None:
        await asyncio.gather(*(send(n) for n in range(5)))

    asyncio.run(burst())
    assert [n for n, _ in sorted(got, key=lambda g: g[1])] == [0, 1, 2, 3, 4]
    assert [at for _, at in sorted(got, key=lambda g: g[1])] == pytest.approx([100.0, 100.2, 100.4, 100.6, 100.8])


def test_after_a_pause_the_next_send_goes_at_once_with_no_burst_to_catch_up():
    lim, t = limiter(2.0)
    assert [turn(lim, t) for _ in range(3)] == pytest.approx([100.0, 100.5, 101.0])
    t.now += 10.0  # nothing to send for a while
    assert turn(lim, t) == pytest.approx(111.0)  # at once
    assert turn(lim, t) == pytest.approx(111.5)  # and the next a full interval later, not sooner


def test_a_slot_is_taken_only_when_free_and_a_late_start_pushes_the_next():
    lim, t = limiter(4.0)
    assert lim.now_or_never()  # free at once: booked
    assert not lim.now_or_never()  # the next is 0.25 s away: nothing booked
    t.now += 0.25
    assert lim.now_or_never()
    t.now += 0.1
    lim.started_late()  # what the last turn granted happened only now (a session was reopened)
    t.now += 0.2
    assert not lim.now_or_never()  # 0.25 s from the late start, not from the slot
    t.now += 0.05
    assert lim.now_or_never()
    assert turn(lim, t) == pytest.approx(100.85)  # a waiter queues behind the slot just booked
