"""Read-ahead and background writer: order, bounded memory, errors, draining on failure."""

from __future__ import annotations

import threading
import time

import pytest

from kosmos_cli.run.background import BackgroundWriter, read_ahead
from kosmos_cli.errors import OutputFailed


def test_read_ahead_keeps_order_and_stays_bounded():
    produced = []

    def items():
        for number in range(50):
            produced.append(number)
            yield number

    consumed = []
    for item in read_ahead(items(), depth=3):
        time.sleep(0.001)
        # The producer is never more than depth (+1 being handed over, +1 being made) ahead.
        assert len(produced) - len(consumed) <= 5
        consumed.append(item)
    assert consumed == list(range(50))


def test_read_ahead_reraises_producer_errors_in_the_consumer():
    def items():
        yield 1
        raise ValueError("bad page")

    iterator = read_ahead(items(), depth=2)
    assert next(iterator) == 1
    with pytest.raises(ValueError, match="bad page"):
        next(iterator)


def test_read_ahead_stops_producer_when_consumer_leaves():
    produced = []

    def items():
        for number in range(1000):
            produced.append(number)
            yield number

    for item in read_ahead(items(), depth=2):
        if item == 3:
            break
    time.sleep(0.3)
    assert len(produced) < 10


def test_writer_runs_jobs_in_order_off_the_calling_thread():
    seen = []
    with BackgroundWriter() as writer:
        for number in range(20):
            writer.submit(lambda number=number: seen.append((number, threading.current_thread().name)))
    assert [number for number, _ in seen] == list(range(20))
    assert {name for _, name in seen} == {"kosmos25-writer"}


def test_writer_error_surfaces_on_next_submit_and_later_jobs_are_dropped():
    seen = []
    writer = BackgroundWriter()

    def fail():
        raise OutputFailed("cannot write out.json: No space left on device")

    writer.submit(fail)
    with pytest.raises(OutputFailed, match="No space left"):
        for _ in range(3000):  # until the writer thread has run `fail` (at most 30 s on a busy machine)
            writer.submit(lambda: seen.append(1))  # queued before that: dropped after it
            time.sleep(0.01)
    writer.close()
    assert seen == []


def test_writer_finishes_queued_work_when_the_run_is_interrupted():
    seen = []
    with pytest.raises(KeyboardInterrupt):
        with BackgroundWriter() as writer:
            for number in range(5):
                writer.submit(lambda number=number: (time.sleep(0.01), seen.append(number)))
            raise KeyboardInterrupt
    assert seen == [0, 1, 2, 3, 4]
