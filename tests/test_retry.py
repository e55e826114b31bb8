"""The one retry policy: bounded attempts, jittered delays within their
doubling, capped ceilings, a sleep that can cut the wait short."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventtrail.retry import Backoff, RetriesExhausted


class Flaky:
    """Fails ``failures`` times with ``error``, then answers ``"done"``."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_delays_yields_bounded_attempts_and_sleeps_between_them_only() -> None:
    sleeps: list[float] = []
    attempts = list(Backoff(attempts=4, base=0.1, sleep=sleeps.append).delays())
    assert attempts == [1, 2, 3, 4]
    assert len(sleeps) == 3


def test_a_single_attempt_never_sleeps() -> None:
    sleeps: list[float] = []
    assert list(Backoff(attempts=1, sleep=sleeps.append).delays()) == [1]
    assert sleeps == []


def test_ceilings_double_up_to_the_cap() -> None:
    backoff = Backoff(base=0.05, cap=0.3, jitter=False)
    assert [backoff.delay(retry) for retry in range(1, 6)] == [0.05, 0.1, 0.2, 0.3, 0.3]


def test_an_unbounded_backoff_runs_until_sleep_says_stop() -> None:
    waits = itertools.count(1)
    # A worker passes stop_event.wait: it returns True once a stop is requested.
    backoff = Backoff(attempts=None, sleep=lambda _: next(waits) >= 5)
    assert list(backoff.delays()) == [1, 2, 3, 4, 5]


def test_run_retries_what_may_pass_and_returns_the_answer() -> None:
    sleeps: list[float] = []
    call = Flaky(2, TimeoutError("slow"))
    assert Backoff(attempts=3, base=0.1, sleep=sleeps.append).run(call, retry_on=(TimeoutError,)) == "done"
    assert call.calls == 3
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2


def test_run_gives_up_after_the_last_attempt_with_the_last_failure() -> None:
    call = Flaky(10, TimeoutError("slow"))
    with pytest.raises(RetriesExhausted) as raised:
        Backoff(attempts=3, sleep=lambda _: None).run(call, retry_on=(TimeoutError,))
    assert call.calls == 3
    assert raised.value.attempts == 3
    assert raised.value.last is call.error and raised.value.__cause__ is call.error


def test_run_stops_when_sleep_returns_true() -> None:
    call = Flaky(10, TimeoutError("slow"))
    with pytest.raises(RetriesExhausted) as raised:
        Backoff(attempts=None, sleep=lambda _: True).run(call, retry_on=(TimeoutError,))
    assert call.calls == 1 and raised.value.attempts == 1


def test_a_failure_not_worth_retrying_passes_through_at_once() -> None:
    sleeps: list[float] = []
    call = Flaky(1, KeyError("bug"))
    with pytest.raises(KeyError):
        Backoff(attempts=5, sleep=sleeps.append).run(call, retry_on=(TimeoutError,))
    assert call.calls == 1 and sleeps == []


@given(
    base=st.floats(min_value=0, max_value=10, allow_nan=False),
    cap=st.floats(min_value=0, max_value=60, allow_nan=False),
    retry=st.integers(min_value=1, max_value=10_000),
)
def test_every_delay_is_within_zero_and_its_capped_doubling_ceiling(
    base: float, cap: float, retry: int
) -> None:
    backoff = Backoff(base=base, cap=cap)
    ceiling = Backoff(base=base, cap=cap, jitter=False).delay(retry)
    assert ceiling == min(cap, base * 2 ** min(retry - 1, 62))
    assert 0 <= backoff.delay(retry) <= ceiling <= cap


@given(attempts=st.integers(min_value=1, max_value=50))
def test_the_number_of_attempts_and_sleeps_is_exactly_the_budget(attempts: int) -> None:
    sleeps: list[float] = []
    assert list(Backoff(attempts=attempts, sleep=sleeps.append).delays()) == list(range(1, attempts + 1))
    assert len(sleeps) == attempts - 1
    assert all(0 <= delay <= 2.0 for delay in sleeps)
