"""Background threads that keep the model busy: a bounded read-ahead of pages, and a
writer that saves results while the model reads the next batch."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from ..errors import KosmosError

Item = TypeVar("Item")
_DONE = object()


def read_ahead(items: Iterable[Item], depth: int) -> Iterator[Item]:
    """Iterate `items` in a background thread, at most `depth` items ahead of the consumer.

    Memory stays bounded by `depth`. An exception raised while producing is re-raised
    here, in the consumer's thread. Closing the iterator (or an exception in the
    consumer) stops the producer at its next item.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed over to the consumer, which re-raises it
            put((_DONE, exc))
            return
        put((_DONE, None))

    thread = threading.Thread(target=produce, name="kosmos25-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        # Let the producer finish the item it is on: a thread still inside torch when the
        # interpreter exits (after Ctrl-C) aborts the process ("terminate called ...").
        thread.join(timeout=30)


class BackgroundWriter:
    """Runs write jobs in order on one background thread.

    The first exception a job raises is re-raised by the next `submit` or by `close`;
    later jobs are dropped. `close` (also on leaving a `with` block, even through
    Ctrl-C) waits until every submitted job has run, so finished work is not lost.
    """

    def __init__(self, depth: int = 16) -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="kosmos25-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # noqa: BLE001 - handed over to the submitting thread
                    self._error = exc

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[[], object]) -> None:
        """Queue `job`; raises the error of an earlier job, if any."""
        self._raise_pending()
        self._jobs.put(job)

    def close(self) -> None:
        """Run every queued job, stop the thread, and raise the first job error."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._raise_pending()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()  # keep what is finished even when the run is failing or interrupted
        except (KosmosError, OSError):
            pass  # the exception already on its way out is the one to report
