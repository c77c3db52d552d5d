"""A run on Ray (`--ray`): the same job, its documents shared out to a pool of actors.

Each actor (`ray_worker.KosmosWorker`) loads the model once (a `Reader`) and runs the
single-machine pipeline on the work it is given: a few whole documents at a time (their pages batched
together, as locally), or one page range of a long PDF. Inputs and outputs are
shared paths: the driver sends paths, never file bytes (except stdin's), and gets
back results, which it merges per document and writes through the same sink as a
local run, so outputs, sidecars, resume, messages and exit codes are the local ones.

A worker that dies is replaced and its unfinished work redone; work that was shared
with others is then tried one document (or range) at a time, so a file that kills
workers is found and failed after `max_attempts` tries, costing only itself. A worker
that dies while loading the model is replaced without charging any work; after
`max_attempts` such deaths in a row its place is given up, and the run goes on with the
others (ModelUnavailable when none is left).

Ray is imported only when `--ray` is given (`ray_connect.connect`).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field, replace

from ..errors import InputError, KosmosError, ModelUnavailable
from ..inputs.documents import Document, selected_pages
from ..model.records import RawOutput
from ..results import DocumentResult, PageResult
from .pipeline import Reporter, RunSummary, Sink
from .ray_connect import RayOptions, connect
from .ray_worker import KosmosWorker, UnitOutcome, WorkerSetup, WorkUnit

# Environment the workers need from the driver's (a local instance passes it anyway;
# a cluster's workers were started elsewhere).
_WORKER_ENV = ("PYTHONPATH", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
               "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "KOSMOS25_MODEL")  # fmt: skip


@dataclass(eq=False)
class _DocWork:
    """The driver's view of one document: how many units are out and what came back."""

    doc: Document
    earlier: tuple[PageResult, ...] = ()
    units_left: int = 0
    pages: dict[int, PageResult] = field(default_factory=dict)
    error: InputError | None = None
    started: bool = False
    result: DocumentResult | None = None  # read, waiting for its turn to be written (stdout)
    closed: bool = False


@dataclass(eq=False)
class _Task:
    """Units sent to one worker in one call (whole documents, or one page range)."""

    units: list[WorkUnit]


class RayRun:
    """Drives one run on Ray: plans units, keeps the worker pool busy, merges and writes."""

    def __init__(self, options: RayOptions, setup: WorkerSetup, sink: Sink, reporter: Reporter, summary: RunSummary,
                 group_size: int, in_order: bool) -> None:  # fmt: skip
        self.options = options
        self.setup = setup
        self.sink = sink
        self.reporter = reporter
        self.summary = summary
        self.group_size = group_size
        self.work: dict[int, _DocWork] = {}  # by unit key
        # stdout takes documents in input order, as a local run writes them; files as they come.
        self.in_order = in_order
        self.order: list[_DocWork] = []
        self.next_to_write = 0
        self.attempts: dict[int, int] = {}
        self.ray = None
        self.cpus_each = 1.0

    def run(self, documents: list[Document]) -> None:
        """Read every document not done yet; fills `self.summary`. Raises ModelUnavailable
        (Ray missing or the model not loadable) or OutputFailed."""
        todo = []
        for doc in documents:
            if self.sink.is_done(doc):
                self.summary.skipped += 1
                self.reporter.document_skipped(doc)
            else:
                todo.append(doc)
        if not todo:
            return
        self.ray = connect(self.options)
        workers: list = []
        try:
            queue = deque(self._plan(todo))
            workers = self._start_workers()
            self._drive(queue, workers)
        except KeyboardInterrupt:
            self.summary.interrupted = True
        finally:
            for worker in workers:
                self.ray.kill(worker)
            self.ray.shutdown()

    # --- planning ---------------------------------------------------------

    def _plan(self, documents: list[Document]) -> list[_Task]:
        """Units in input order: long PDFs split into page ranges, the other documents
        grouped a few to a task so their pages share `generate` calls."""
        tasks: list[_Task] = []
        group: list[WorkUnit] = []
        for doc in documents:
            unfinished = self.sink.unfinished(doc, self.setup.task, self.setup.settings.model)
            work = _DocWork(doc, earlier=unfinished.done if unfinished else ())
            self.order.append(work)
            wanted = unfinished.retry if unfinished else self.setup.page_options.pages
            numbers = selected_pages(doc, replace(self.setup.page_options, pages=wanted))
            size = self.options.pages_per_task
            if numbers is not None and (len(numbers) > size or unfinished):
                ranges = [frozenset(numbers[start : start + size]) for start in range(0, len(numbers), size)]
                for pages in ranges:
                    tasks.append(_Task([self._unit(work, pages)]))
                continue
            if unfinished:  # its retry pages could not be listed: read them as one piece
                tasks.append(_Task([self._unit(work, unfinished.retry)]))
                continue
            group.append(self._unit(work, None))
            if len(group) >= self.group_size:
                tasks.append(_Task(group))
                group = []
        if group:
            tasks.append(_Task(group))
        return tasks

    def _unit(self, work: _DocWork, pages: frozenset[int] | None) -> WorkUnit:
        key = len(self.work)
        self.work[key] = work
        self.attempts[key] = 0
        work.units_left += 1
        return WorkUnit(key, work.doc, pages)

    # --- workers ----------------------------------------------------------

    def _worker_count(self) -> tuple[int, float]:
        """How many workers, and CPUs for each: one per GPU (or per --gpus-per-worker),
        else a few that fit the CPUs (the model uses several cores each)."""
        resources = self.ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), max(resources.get("CPU", 1.0), 1.0)
        count = self.options.workers
        if count is None:
            if gpus >= self.options.gpus_per_worker > 0:
                count = int(gpus // self.options.gpus_per_worker)
            else:
                count = max(1, min(4, int(cpus // 4)))
        if gpus and self.options.gpus_per_worker:
            return count, 1.0
        # Whole cores where there are enough, else a share (Ray places fractions), so that
        # every worker starts rather than waiting for a core that never comes free.
        return count, float(int(cpus // count)) if cpus >= count else cpus / count

    def _start_workers(self) -> list:
        """The pool's actors, each starting to load the model (`_drive` waits for them)."""
        count, self.cpus_each = self._worker_count()
        return [self._new_worker() for _ in range(count)]

    def _new_worker(self):
        resources = self.ray.cluster_resources()
        gpus = self.options.gpus_per_worker if resources.get("GPU", 0.0) else 0.0
        actor = self.ray.remote(num_cpus=self.cpus_each, num_gpus=gpus, max_restarts=0)(KosmosWorker)
        env = {name: os.environ[name] for name in _WORKER_ENV if name in os.environ}
        return actor.options(runtime_env={"env_vars": env} if env else None).remote(self.setup)

    # --- the loop ---------------------------------------------------------

    def _drive(self, queue: deque[_Task], workers: list) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        # future -> (worker index, its task; None: the worker's `ready`, while it loads the model)
        running: dict = {worker.ready.remote(): (index, None) for index, worker in enumerate(workers)}
        idle: list[int] = []
        load_deaths = [0] * len(workers)  # in a row, per place in the pool
        places = len(workers)  # places not given up
        announced = False  # the workers' model was reported
        while queue or any(task is not None for _, task in running.values()):
            while queue and idle:
                index = idle.pop()
                task = queue.popleft()
                for unit in task.units:
                    self._started(unit)
                running[workers[index].read.remote(task.units)] = (index, task)
            done, _ = self.ray.wait(list(running), num_returns=1)
            future = done[0]
            index, task = running.pop(future)
            try:
                answer = self.ray.get(future)
            except RayActorError as error:
                # The worker died (killed, out of memory, crashed in native code, its node
                # gone): replace it, and redo its work one unit at a time so a unit that kills
                # is found. Deaths while loading are not charged to any unit.
                self.ray.kill(workers[index])
                if task is not None:
                    self._retry(queue, task, "a worker died while reading it")
                else:
                    load_deaths[index] += 1
                    if self._give_up_place(error, load_deaths[index], places):
                        places -= 1
                        continue
                workers[index] = self._new_worker()
                running[workers[index].ready.remote()] = (index, None)
                continue
            except RayTaskError as error:
                self._retry(queue, task, f"worker error ({error.cause if error.cause else error})")
                idle.append(index)
                continue
            if isinstance(answer, KosmosError):
                raise answer  # the model cannot be loaded, or a run-wide error (--draw)
            idle.append(index)
            if task is None:
                load_deaths[index] = 0
                if not announced:
                    announced = True
                    self.reporter.info(f"{answer} in each of {len(workers)} Ray worker{'s' * (len(workers) != 1)}")
                continue
            for outcome in answer:
                self._finish_unit(outcome)

    def _give_up_place(self, error, deaths: int, places: int) -> bool:
        """After a worker died loading the model: whether to stop replacing it (its
        replacements died `max_attempts` times in a row: a node that cannot run it) and go
        on with the other `places - 1`. Raises ModelUnavailable when its `__init__` raised
        (the model cannot load anywhere) or no place would be left."""
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if error.actor_init_failed:
            raise ModelUnavailable(f"--ray: a worker could not load the model ({reason})")
        if deaths < self.options.max_attempts:
            return False
        if places == 1:
            raise ModelUnavailable(f"--ray: workers died while loading the model, {deaths} times in a row ({reason})")
        self.reporter.info(f"warning: --ray: a worker died while loading the model {deaths} times in a row; "
                           f"going on with {places - 1} worker{'s' * (places != 2)}")  # fmt: skip
        return True

    def _started(self, unit: WorkUnit) -> None:
        work = self.work[unit.key]
        if not work.started:
            work.started = True
            self.reporter.document_started(work.doc)

    def _retry(self, queue: deque[_Task], task: _Task, reason: str) -> None:
        for unit in reversed(task.units):
            self.attempts[unit.key] += 1
            if self.attempts[unit.key] >= self.options.max_attempts:
                tries = f"gave up after {self.attempts[unit.key]} tries: {reason}"
                if unit.pages is None:
                    self._finish_unit(UnitOutcome(unit.key, error=InputError(f"{unit.doc.source}: {tries}")))
                else:
                    # A page range: its pages are failed pages, so the document's other ranges
                    # are still written and a re-run retries just these (as for any failed page).
                    failed = (PageResult.failed(n, f"{unit.doc.source}: page {n}: {tries}") for n in sorted(unit.pages))
                    self._finish_unit(UnitOutcome(unit.key, pages=tuple(failed)))
            else:
                queue.appendleft(_Task([unit]))

    def _finish_unit(self, outcome: UnitOutcome) -> None:
        work = self.work[outcome.key]
        work.units_left -= 1
        if outcome.error is not None:
            work.error = work.error or outcome.error
        for page in outcome.pages:
            work.pages[page.page] = page
            if page.error is not None:
                self.summary.failed_pages += 1
                self.reporter.page_failed(work.doc, page.page, InputError(page.error))
            else:
                self.summary.pages += 1
                self.summary.truncated_pages += page.truncated
                self.summary.looping_pages += page.looping
                # The reporter warns from the page's flags, as for a local page.
                self.reporter.page_done(work.doc, page.page, RawOutput("", 0, 0, page.truncated, page.looping))
        if work.units_left == 0:
            self._finish_document(work)

    def _finish_document(self, work: _DocWork) -> None:
        """All of a document's units are back: fail it, or merge its pages for writing."""
        work.closed = True
        if work.error is not None:
            self.summary.failed += 1
            self.sink.failed(work.doc, work.error)
            self.reporter.document_failed(work.doc.source, work.error)
        else:
            pages = {page.page: page for page in work.earlier}
            pages.update(work.pages)
            failed = [page for page in pages.values() if page.error is not None]
            if failed and len(failed) == len(pages):
                # Not one page read: nothing worth a file; the page errors were reported.
                self.summary.failed += 1
                self.sink.failed(work.doc, InputError(failed[0].error))
                self.reporter.document_incomplete(work.doc, None, None)
            else:
                work.result = DocumentResult(
                    source=work.doc.source,
                    model=self.setup.settings.model,
                    task=self.setup.task,
                    pages=tuple(pages[number] for number in sorted(pages)),
                )
        if not self.in_order:
            self._write(work)
            return
        while self.next_to_write < len(self.order) and self.order[self.next_to_write].closed:
            self._write(self.order[self.next_to_write])
            self.next_to_write += 1

    def _write(self, work: _DocWork) -> None:
        result, work.result = work.result, None
        if result is None:
            return
        written = self.sink.write(work.doc, result)
        if result.failed_pages:
            self.summary.failed += 1
            self.reporter.document_incomplete(work.doc, result, written)
        else:
            self.summary.done += 1
            self.reporter.document_done(work.doc, result, written)


def run_on_ray(options: RayOptions, setup: WorkerSetup, documents: list[Document], sink: Sink, reporter: Reporter,
               summary: RunSummary, in_order: bool = False) -> None:  # fmt: skip
    """Read `documents` on Ray into `sink`, filling `summary`, as a local run would.
    `in_order`: write documents in input order (stdout), not as they finish."""
    # Whole documents go a few to a task so their pages can share `generate` calls.
    RayRun(options, setup, sink, reporter, summary, group_size=setup.batch_size or 4, in_order=in_order).run(documents)
