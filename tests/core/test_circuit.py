"""The LLM circuit breaker on a hand-driven clock: open, back off, probe once, close or reopen."""

from __future__ import annotations

import pytest

from core.platform.circuit import CircuitBreaker, CircuitState


class Clock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(base=2.0, maximum=30.0, clock=clock)


def test_a_closed_circuit_lets_every_call_through(breaker: CircuitBreaker) -> None:
    assert all(breaker.allow() for _ in range(5))
    assert breaker.state is CircuitState.CLOSED and breaker.remaining() == 0.0
    assert breaker.success() is False  # nothing was open


def test_a_failure_opens_for_exactly_the_servers_retry_after(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    assert breaker.failure("429 rate limited", retry_after=7.0) == 7.0
    assert breaker.state is CircuitState.OPEN and breaker.last_error == "429 rate limited"
    clock.advance(6.9)
    assert not breaker.allow()
    assert breaker.remaining() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.state is CircuitState.HALF_OPEN


def test_retry_after_is_capped_at_the_maximum(breaker: CircuitBreaker) -> None:
    assert breaker.failure("429", retry_after=3600.0) == 30.0


def test_without_retry_after_the_backoff_doubles_up_to_the_cap(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    backoffs = []
    for _ in range(6):
        backoffs.append(breaker.failure("503"))
        clock.advance(backoffs[-1])
        assert breaker.allow()  # the probe goes out, and fails again
    assert backoffs == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_half_open_lets_exactly_one_probe_through(breaker: CircuitBreaker, clock: Clock) -> None:
    breaker.failure("timeout")
    clock.advance(2.0)
    assert breaker.allow()
    assert [breaker.allow() for _ in range(3)] == [False, False, False]
    clock.advance(60.0)  # however long the probe takes, no second caller joins it
    assert not breaker.allow()


def test_a_successful_probe_closes_and_forgets_the_trips(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    breaker.failure("timeout")
    clock.advance(2.0)
    breaker.failure("timeout")
    clock.advance(4.0)
    assert breaker.allow()
    assert breaker.success() is True  # this closed an open circuit
    assert breaker.state is CircuitState.CLOSED
    assert (breaker.trips, breaker.last_error, breaker.remaining()) == (0, None, 0.0)
    assert breaker.failure("timeout") == 2.0  # the backoff starts again from the base


def test_a_failed_probe_reopens_for_longer(breaker: CircuitBreaker, clock: Clock) -> None:
    first = breaker.failure("timeout")
    clock.advance(first)
    assert breaker.allow()
    second = breaker.failure("timeout")
    assert second > first
    assert breaker.state is CircuitState.OPEN
    clock.advance(second - 0.01)
    assert not breaker.allow()
    clock.advance(0.01)
    assert breaker.allow()


def test_an_abandoned_probe_lets_the_next_call_probe_at_once(
    breaker: CircuitBreaker, clock: Clock
) -> None:
    breaker.failure("timeout")
    clock.advance(2.0)
    assert breaker.allow()
    breaker.abandon()  # the probing request was cancelled: no verdict
    assert breaker.state is CircuitState.OPEN and breaker.remaining() == 0.0
    assert breaker.allow()
    assert not breaker.allow()
    assert breaker.trips == 1  # a cancel is not a failure


def test_abandon_outside_a_probe_changes_nothing(breaker: CircuitBreaker, clock: Clock) -> None:
    breaker.abandon()
    assert breaker.state is CircuitState.CLOSED
    breaker.failure("timeout")
    breaker.abandon()
    assert breaker.state is CircuitState.OPEN and breaker.remaining() == 2.0


def test_a_maximum_below_the_base_is_raised_to_it(clock: Clock) -> None:
    assert CircuitBreaker(base=5.0, maximum=1.0, clock=clock).failure("x") == 5.0
