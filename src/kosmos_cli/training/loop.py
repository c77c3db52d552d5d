"""`kosmos25 train`: pages with ground truth -> a fine-tuned model (LoRA adapter or full).

The run folder holds `config.json` (the run's settings and data), `metrics.jsonl` (one
JSON object per optimizer step and per validation), `best/` (lowest validation loss, or
lowest epoch training loss without a validation set) and `last/`. Both load with
`--model RUN_DIR/best` (LoRA adapters included, see `model.loading`).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import OutputFailed, UsageError
from ..evaluation.groundtruth import PageTruth
from ..evaluation.run import Failure, gather_truth
from ..evaluation.targets import TokenBudget, target_text
from ..inputs.documents import Document, PageGeometry, PageOptions, collect_documents, iter_pages
from ..model.runner import TASK_PROMPTS
from ..outputs.files import check_folder_writable, write_atomic
from ..run.progress import PlainReporter
from .examples import Example, collate, target_ids

METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 2e-4, "full": 1e-5}
# LoRA adapts the text decoder's attention and feed-forward projections; the vision encoder stays as it is.
LORA_TARGETS = r".*text_model\..*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"


@dataclass(frozen=True)
class TrainJob:
    """Everything one `kosmos25 train` run needs, as given on the command line."""

    task: str
    paths: tuple[str, ...]
    run_dir: Path
    model: str
    revision: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    max_patches: int | None = None
    page_options: PageOptions = field(default_factory=PageOptions)
    truth_dir: Path | None = None
    method: str = "lora"
    epochs: int = 3
    max_steps: int | None = None
    lr: float | None = None
    batch_size: int = 1
    grad_accum: int = 1
    val_split: float = 0.1
    patience: int = 2
    seed: int = 0
    lora_rank: int = 16


@dataclass(frozen=True)
class TrainPage:
    """One page to learn: where it is and what the model should write for it."""

    doc: Document
    number: int
    truth: PageTruth
    geometry: PageGeometry


@dataclass(frozen=True)
class TrainSummary:
    """What a run did: steps taken, best validation loss, where it saved, pages left out."""

    steps: int
    epochs: int
    best_loss: float | None
    stopped_early: bool
    run_dir: Path
    failures: tuple[Failure, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": self.epochs, "best_loss": self.best_loss,
                "stopped_early": self.stopped_early, "run_dir": str(self.run_dir),
                "failures": [failure.to_dict() for failure in self.failures]}  # fmt: skip


@dataclass
class EarlyStopping:
    """Tracks the best loss; `update` says whether a loss is a new best and whether to stop
    (`patience` evaluations in a row without a better one)."""

    patience: int
    best: float = math.inf
    stale: int = 0

    def update(self, loss: float) -> tuple[bool, bool]:
        if loss < self.best:
            self.best, self.stale = loss, 0
            return True, False
        self.stale += 1
        return False, self.stale >= self.patience


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


class _Examples:
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


def _gather_pages(job: TrainJob, reporter: PlainReporter) -> tuple[list[TrainPage], list[Failure], Any, Any]:
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
    check_lengths(replace(eval_job, runner=replace(eval_job.runner, max_new_tokens=budget.positions)), documents, truths)
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


def _save(model, processor, folder: Path, base_model: str) -> None:
    from ..model.loading import ADAPTER_CONFIG

    try:
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        adapter = folder / ADAPTER_CONFIG
        if adapter.is_file() and Path(base_model).expanduser().is_dir():
            # The adapter names its base model; an absolute path keeps it loadable from anywhere.
            config = json.loads(adapter.read_text())
            config["base_model_name_or_path"] = str(Path(base_model).expanduser().resolve())
            write_atomic(adapter, json.dumps(config, indent=2) + "\n")
    except OSError as exc:
        raise OutputFailed(f"cannot save the model to {folder}: {exc.strerror or exc}") from None


def _log(path: Path, record: dict) -> None:
    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise OutputFailed(f"cannot write {path}: {exc.strerror or exc}") from None


def _loss(model, batch: dict, device: str):
    return model(**{key: value.to(device) for key, value in batch.items()}).loss


def _validation_loss(model, pages: list[TrainPage], examples: _Examples, pad_id: int, device: str, dtype) -> float:
    """Mean loss per target token over the validation pages."""
    import torch

    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for page in pages:
            example = examples.make(page)
            batch = collate([example], pad_id)
            batch["flattened_patches"] = batch["flattened_patches"].to(dtype)
            total += float(_loss(model, batch, device)) * len(example.target_ids)
            tokens += len(example.target_ids)
    model.train()
    return total / tokens


def train(job: TrainJob, reporter: PlainReporter) -> TrainSummary:
    """Fine-tune the model on the job's pages; see the module docstring for what is saved."""
    import torch

    from ..model.loading import load_model, resolve_device, resolve_dtype

    if job.method not in METHODS:
        raise UsageError(f"--method {job.method}: expected lora or full")
    if job.task not in TASK_PROMPTS:
        raise UsageError(f"--task {job.task}: expected ocr or md")
    check_folder_writable(job.run_dir)
    pages, failures, processor, _config = _gather_pages(job, reporter)
    training, validation = split_pages(pages, job.val_split, job.seed)
    if not training:
        raise UsageError("nothing to train on: no page has usable ground truth")
    device = resolve_device(job.device)
    dtype = resolve_dtype(job.dtype, device) if job.dtype != "auto" else torch.float32
    torch.manual_seed(job.seed)
    _processor, model = load_model(job.model, job.revision, device, dtype, "sdpa")
    if job.method == "lora":
        model = _with_lora(model, job.lora_rank)
    model.train()
    max_patches = job.max_patches or processor.image_processor.max_patches
    examples = _Examples(processor, job.task, job.page_options, max_patches)
    pad_id = processor.tokenizer.pad_token_id
    lr = job.lr if job.lr is not None else DEFAULT_LR[job.method]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    metrics = job.run_dir / "metrics.jsonl"
    write_atomic(metrics, "")
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(job).items()
                if key not in ("page_options", "paths")}  # fmt: skip
    settings |= {"paths": list(job.paths), "lr": lr, "pages_train": [f"{p.doc.source}#{p.number}" for p in training],
                 "pages_validation": [f"{p.doc.source}#{p.number}" for p in validation],
                 "dpi": job.page_options.dpi, "max_patches": max_patches}  # fmt: skip
    write_atomic(job.run_dir / "config.json", json.dumps(settings, indent=2) + "\n")
    reporter.info(f"training {job.method} on {len(training)} page(s), validating on {len(validation)}, {device}")
    rng = random.Random(job.seed)
    step, epoch, stopped_early = 0, 0, False
    # Without a validation set, "best" follows the epoch's training loss and never stops the run.
    stopper = EarlyStopping(job.patience if validation else 10**9)
    max_steps = job.max_steps if job.max_steps is not None else math.inf
    started = time.monotonic()
    while epoch < job.epochs and step < max_steps:
        epoch += 1
        order = list(training)
        rng.shuffle(order)
        epoch_loss, micro = 0.0, 0
        batches = [order[i : i + job.batch_size] for i in range(0, len(order), job.batch_size)]
        for index, chunk in enumerate(batches, 1):
            batch = collate([examples.make(page) for page in chunk], pad_id)
            batch["flattened_patches"] = batch["flattened_patches"].to(dtype)
            loss = _loss(model, batch, device)
            (loss / job.grad_accum).backward()
            epoch_loss += float(loss)
            micro += 1
            if index % job.grad_accum == 0 or index == len(batches):
                optimizer.step()
                optimizer.zero_grad()
                step += 1
                _log(metrics, {"step": step, "epoch": epoch, "train_loss": round(float(loss), 6),
                               "seconds": round(time.monotonic() - started, 2)})  # fmt: skip
                if step >= max_steps:
                    break
        score = _validation_loss(model, validation, examples, pad_id, device, dtype) if validation else epoch_loss / micro
        _log(metrics, {"epoch": epoch, "step": step, "val_loss" if validation else "epoch_train_loss": round(score, 6)})
        reporter.info(f"epoch {epoch}, step {step}: {'validation' if validation else 'training'} loss {score:.4f}")
        improved, stop = stopper.update(score)
        if improved:
            _save(model, processor, job.run_dir / "best", job.model)
        if stop:
            stopped_early = True
            reporter.info(f"no better validation loss for {stopper.stale} epochs: stopping early")
            break
    _save(model, processor, job.run_dir / "last", job.model)
    best = None if stopper.best == math.inf else stopper.best
    return TrainSummary(step, epoch, best, stopped_early, job.run_dir, tuple(failures))


def _with_lora(model, rank: int):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UsageError("--method lora needs peft: pip install 'kosmos25[train]' (or use --method full)") from None
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
    return get_peft_model(model, config)

