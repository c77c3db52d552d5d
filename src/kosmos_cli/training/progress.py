"""Training progress: a live bar on a terminal, one plain line per optimizer step otherwise.

Both say the step, the training loss, the last validation CER and the time left; on CPU
with a large model, a one-time note after the first steps says what a step costs there.
"""

from __future__ import annotations

import time

from ..run.progress import PlainReporter, RichReporter

SLOW_NOTE_AFTER = 3  # steps timed before the CPU note (the first step also pays warm-up costs)
LARGE_MODEL = 100_000_000  # parameters


class TrainProgress:
    """Follows one run from `start_step` to `total` optimizer steps."""

    def __init__(self, reporter: PlainReporter, total: int, start_step: int, device: str, parameters: int) -> None:
        self.reporter = reporter
        self.total = total
        self.start_step = start_step
        self.device = device
        self.parameters = parameters
        self.started = time.monotonic()
        self.cer: float | None = None
        self.noted = False
        self.bar = None
        if isinstance(reporter, RichReporter):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}"), TextColumn("val CER {task.fields[cer]}"),
                                TimeRemainingColumn(), console=reporter.console, transient=True)  # fmt: skip
            self.task = self.bar.add_task("train", total=total, completed=start_step, loss="-", cer="-")
            self.bar.start()

    def _left(self, step: int) -> float | None:
        done = step - self.start_step
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * (self.total - step)

    def step(self, step: int, loss: float) -> None:
        cer = "-" if self.cer is None else f"{100 * self.cer:.1f}%"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}", cer=cer)
        else:
            left = self._left(step)
            eta = "" if left is None else f", about {_duration(left)} left"
            self.reporter.info(f"step {step}/{self.total}: loss {loss:.4f}, validation CER {cer}{eta}")
        done = step - self.start_step
        if not self.noted and done >= SLOW_NOTE_AFTER and self.device == "cpu" and self.parameters > LARGE_MODEL:
            self.noted = True
            per_step = (time.monotonic() - self.started) / done
            self.reporter.info(f"on CPU a step of this {self.parameters / 1e6:.0f}M-parameter model takes about "
                               f"{_duration(per_step)}: a GPU is the practical place to train the real model")  # fmt: skip

    def evaluated(self, cer: float | None) -> None:
        self.cer = cer

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
