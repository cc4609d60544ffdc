"""LoadMeter: counters, the documented score formula, and the event-loop lag sampler."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from mailmux.backend.load import LoadMeter


def test_sessions_and_transactions_are_counted() -> None:
    meter = LoadMeter()
    meter.session_opened()
    meter.session_opened()
    meter.session_closed()
    with meter.transaction(), meter.transaction():
        assert meter.transactions_in_flight == 2
        assert meter.snapshot()["transactions"] == 2.0
    assert meter.transactions_in_flight == 0
    assert meter.sessions == 1


def test_a_failing_transaction_is_still_uncounted() -> None:
    meter = LoadMeter()
    with pytest.raises(KeyError), meter.transaction():
        raise KeyError("boom")
    assert meter.transactions_in_flight == 0


def test_session_count_never_goes_negative() -> None:
    meter = LoadMeter()
    meter.session_closed()
    assert meter.sessions == 0


def test_score_follows_the_documented_formula() -> None:
    meter = LoadMeter()
    for _ in range(3):
        meter.session_opened()
    meter.record_lag(0.050)  # the first sample sets the average: 50 ms
    meter.replication_backlog = lambda: 250
    with meter.transaction():
        # 3 sessions + 2 * 1 transaction + 50 ms / 10 + 250 / 100
        assert meter.score() == pytest.approx(3 + 2 + 5 + 2.5)
        assert meter.snapshot() == {
            "sessions": 3.0,
            "transactions": 1.0,
            "loop_lag_ms": pytest.approx(50.0),
            "replication_backlog": 250.0,
            "score": pytest.approx(12.5),
        }


def test_lag_is_smoothed() -> None:
    meter = LoadMeter(lag_alpha=0.5)
    meter.record_lag(0.0)
    meter.record_lag(0.100)
    assert meter.loop_lag_ms == pytest.approx(50.0)
    meter.record_lag(-1.0)  # clock noise can make the overshoot negative: counted as 0
    assert meter.loop_lag_ms == pytest.approx(25.0)


def test_a_broken_backlog_source_counts_as_zero(caplog: pytest.LogCaptureFixture) -> None:
    meter = LoadMeter()

    def broken() -> int:
        raise RuntimeError("replication gone")

    meter.replication_backlog = broken
    assert meter.score() == 0.0
    assert "replication gone" in caplog.text


async def _until(condition: Callable[[], bool], deadline: float = 5.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.005)


async def test_sampler_measures_non_negative_lag_and_sees_a_blocked_loop() -> None:
    meter = LoadMeter(sample_interval=0.01)
    await meter.start()
    await meter.start()  # idempotent: still one sampler
    try:
        await _until(lambda: meter.lag_samples >= 3)
        assert meter.loop_lag_ms >= 0.0
        before = meter.lag_samples
        time.sleep(0.2)  # not synchronisation: this blocks the loop to create the lag measured
        await _until(lambda: meter.lag_samples > before)
        assert meter.loop_lag_ms > 20.0  # at least alpha (0.2) * ~190 ms of overshoot
    finally:
        await meter.close()
    assert meter._sampler is None
    await meter.close()  # idempotent
