"""Pages with ground truth -> what training reads: the pages, their split, their order and
their examples (rendered on demand)."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..evaluation.groundtruth import PageTruth
from ..evaluation.run import Failure, gather_truth
from ..evaluation.targets import TokenBudget, target_text
from ..inputs.documents import Document, PageGeometry, PageOptions, collect_documents, iter_pages
from ..model.runner import TASK_PROMPTS
from ..run.progress import PlainReporter
from .examples import Example, target_ids

if TYPE_CHECKING:
    from .loop import TrainJob


@dataclass(frozen=True)
class TrainPage:
    """One page to learn: where it is and what the model should write for it."""

    doc: Document
    number: int
    truth: PageTruth
    geometry: PageGeometry


def split_pages(pages: list[TrainPage], val_split: float, seed: int) -> tuple[list[TrainPage], list[TrainPage]]:
    """(training, validation) pages: a seeded shuffle, `val_split` of them (at least one when
    asked for and there are two pages or more) held out."""
    if not 0 <= val_split < 1:
        raise UsageError(f"--val-split {val_split}: expected a fraction from 0 up to (not including) 1")
    order = list(range(len(pages)))
    random.Random(seed).shuffle(order)
    held = 0 if val_split == 0 or len(pages) < 2 else max(1, round(len(pages) * val_split))
    held_out = set(order[:held])
    return [p for i, p in enumerate(pages) if i not in held_out], [p for i, p in enumerate(pages) if i in held_out]


class PageExamples:
    """Pages -> Examples, rendered on demand (a large set is never all in memory)."""

    def __init__(self, processor, task: str, page_options: PageOptions, max_patches: int) -> None:
        from PIL import Image

        self.processor = processor
        self.page_options = page_options
        self.max_patches = max_patches
        probe = processor(text=[TASK_PROMPTS[task]], images=[Image.new("RGB", (16, 16))], max_patches=16,
                          return_tensors="pt")  # fmt: skip
        self.prompt_ids = tuple(probe["input_ids"][0].tolist())
        self.image_mask = tuple(probe["image_embeds_position_mask"][0].tolist())

    def make(self, page: TrainPage) -> Example:
        options = replace(self.page_options, pages=frozenset({page.number}))
        image = next(iter_pages(page.doc, options)).image
        features = self.processor.image_processor(images=[image], max_patches=self.max_patches, return_tensors="pt")
        geometry = replace(page.geometry, width=image.width, height=image.height)
        text = target_text(page.truth, geometry, self.max_patches)
        return Example(features["flattened_patches"][0], self.prompt_ids, self.image_mask,
                       target_ids(self.processor.tokenizer, text))  # fmt: skip


def gather_pages(job: TrainJob, reporter: PlainReporter) -> tuple[list[TrainPage], list[Failure], Any, Any]:
    from ..evaluation.run import EvalJob, check_lengths
    from ..model.loading import load_processor
    from ..model.runner import RunnerSettings

    documents, missing = collect_documents(job.paths)
    failures = [Failure(source, None, error.message) for source, error in missing]
    for failure in failures:
        reporter.error(failure.message)
    eval_job = EvalJob(job.task, job.paths, RunnerSettings(model=job.model, revision=job.revision,
                       max_patches=job.max_patches), job.page_options, job.truth_dir)  # fmt: skip
    truths, bad = gather_truth(eval_job, documents, reporter)
    failures += bad
    processor, config = load_processor(job.model, job.revision)
    budget = TokenBudget.for_model(config, max_new_tokens=10**9)  # training: only the position table limits
    # check_lengths applies the budget of eval's max_new_tokens; give it the positions instead.
    positions_job = replace(eval_job, runner=replace(eval_job.runner, max_new_tokens=budget.positions))
    check_lengths(positions_job, documents, truths, loaded=(processor, config))
    pages = []
    for doc in documents:
        truth = truths.get(id(doc))
        if truth is None:
            continue
        for number, page in truth.pages.items():
            if isinstance(page, PageTruth):
                pages.append(TrainPage(doc, number, page, truth.geometry[number]))
            else:
                failures.append(Failure(doc.source, number, page.message))
                reporter.error(page.message)
    return pages, failures, processor, config


def epoch_order(pages: list[TrainPage], seed: int, epoch: int) -> list[TrainPage]:
    """The epoch's page order, from the seed and the epoch alone (so a resumed run repeats it)."""
    order = list(pages)
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order
