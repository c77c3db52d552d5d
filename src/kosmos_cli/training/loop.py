"""`kosmos25 train`: pages with ground truth -> a fine-tuned model (LoRA adapter or full).

The run folder holds `config.json` (the run's settings and data), `metrics.jsonl` (one
JSON object per optimizer step; `val_loss` and `cer` on the steps validated), `best/` (lowest
validation loss, or lowest epoch training loss without a validation set) and `last/` (with
the training state, for `--resume`; saved at every validation and at the end). Both load
with `--model RUN_DIR/best` (LoRA adapters included, see `model.loading`); both are written
atomically (see `state`).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TrainingInterrupted, UsageError
from ..evaluation.run import Failure
from ..inputs.documents import PageOptions
from ..model.runner import TASK_PROMPTS
from ..outputs.files import check_folder_writable, write_atomic
from ..run.progress import PlainReporter
from .examples import collate
from .lora import with_lora
from .pages import PageExamples, TrainPage, epoch_order, gather_pages, split_pages
from .progress import TrainProgress
from .schedule import default_warmup, make_scheduler
from .state import append_metrics, check_resumable, checkpoint_folder, keep_metrics_until, load_state, save_checkpoint

METHODS = ("lora", "full")
DEFAULT_LR = {"lora": 2e-4, "full": 1e-5}


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
    lora_alpha: float | None = None  # None: 2 x rank
    lora_dropout: float = 0.0
    lora_vision: bool = False
    warmup_steps: int | None = None  # None: 10% of the planned steps
    eval_every: int | None = None  # None: validate at each epoch's end
    resume: bool = False


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


def _loss(model, batch: dict, device: str):
    return model(**{key: value.to(device) for key, value in batch.items()}).loss


_TAG = re.compile(r"<[^<>]*>")


def _plain(text: str) -> str:
    """Text without the model's tags (boxes, end token): what CER compares."""
    return _TAG.sub("", text).strip()


def _validate(model, pages: list[TrainPage], examples: PageExamples, pad_id: int, device: str, dtype,
              tokenizer) -> tuple[float, float | None]:  # fmt: skip
    """(mean loss per target token, CER of greedy reading) over the validation pages.

    The CER compares the text the model writes with the target's text, tags (boxes) left out.
    """
    import torch

    from ..evaluation.metrics import Rate, cer

    total, tokens, rate = 0.0, 0, Rate()
    model.eval()
    with torch.no_grad():
        for page in pages:
            example = examples.make(page)
            batch = collate([example], pad_id)
            batch["flattened_patches"] = batch["flattened_patches"].to(dtype)
            total += float(_loss(model, batch, device)) * len(example.target_ids)
            tokens += len(example.target_ids)
            prompt = len(example.prompt_ids)
            inputs = {key: batch[key][:, :prompt].to(device) for key in ("input_ids", "attention_mask", "image_embeds_position_mask")}
            generated = model.generate(**inputs, flattened_patches=batch["flattened_patches"].to(device),
                                       max_new_tokens=len(example.target_ids) + 16, do_sample=False)  # fmt: skip
            written = tokenizer.decode(generated[0, prompt:], skip_special_tokens=False)
            truth = tokenizer.decode(list(example.target_ids), skip_special_tokens=False)
            rate += cer(_plain(written.split(tokenizer.eos_token)[0]), _plain(truth.split(tokenizer.eos_token)[0]))
    model.train()
    return total / tokens, rate.value


def _enable_checkpointing(model) -> bool:
    """Recompute activations in the backward pass (less memory on a GPU). transformers 5
    renamed gradient_checkpointing_enable to activation_checkpointing_enable: use what is there."""
    for name, keyword in (("activation_checkpointing_enable", "activation_checkpointing_kwargs"),
                          ("gradient_checkpointing_enable", "gradient_checkpointing_kwargs")):  # fmt: skip
        enable = getattr(model, name, None)
        if callable(enable) and getattr(model, "supports_gradient_checkpointing", False):
            enable(**{keyword: {"use_reentrant": False}})
            return True
    return False


def _build_model(job: TrainJob, device: str, dtype, resume_from: Path | None, reporter: PlainReporter):
    """The model to train: the base (or, resuming a full fine-tune, `last/`), with LoRA when asked,
    the adapter's weights restored when resuming."""
    from ..model.loading import load_model

    source = str(resume_from) if resume_from is not None and job.method == "full" else job.model
    _processor, model = load_model(source, job.revision if source == job.model else None, device, dtype, "sdpa")
    if device.startswith("cuda") and _enable_checkpointing(model):
        reporter.info("gradient checkpointing on")
    if job.method == "lora":
        model, matched = with_lora(model, job.lora_rank, job.lora_alpha if job.lora_alpha is not None else 2 * job.lora_rank,
                                   job.lora_dropout, job.lora_vision)  # fmt: skip
        reporter.info(f"LoRA on {matched} modules ({'text decoder and vision encoder' if job.lora_vision else 'text decoder'})")
        if device.startswith("cuda"):
            # With checkpointing and frozen embeddings, the inputs must carry gradients for LoRA's to flow.
            model.enable_input_require_grads()
        if resume_from is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(resume_from / "adapter_model.safetensors"), device=device))
    return model


def train(job: TrainJob, reporter: PlainReporter) -> TrainSummary:
    """Fine-tune the model on the job's pages; see the module docstring for what is saved."""
    import torch

    from ..model.loading import resolve_device, resolve_dtype

    if job.method not in METHODS:
        raise UsageError(f"--method {job.method}: expected lora or full")
    if job.task not in TASK_PROMPTS:
        raise UsageError(f"--task {job.task}: expected ocr or md")
    check_folder_writable(job.run_dir)
    resume_from, state = load_state(job.run_dir) if job.resume else (None, None)
    pages, failures, processor, _config = gather_pages(job, reporter)
    training, validation = split_pages(pages, job.val_split, job.seed)
    if not training:
        raise UsageError("nothing to train on: no page has usable ground truth")
    device = resolve_device(job.device)
    if job.dtype != "auto":
        dtype = resolve_dtype(job.dtype, device)
    elif device.startswith("cuda"):
        # bf16 on a GPU that has it: half the memory, same range as float32.
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    else:
        dtype = torch.float32
    lr = job.lr if job.lr is not None else DEFAULT_LR[job.method]
    per_epoch = math.ceil(math.ceil(len(training) / job.batch_size) / job.grad_accum)
    horizon = job.epochs * per_epoch
    warmup = job.warmup_steps if job.warmup_steps is not None else default_warmup(horizon)
    max_patches = job.max_patches or processor.image_processor.max_patches
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(job).items()
                if key not in ("page_options", "paths", "resume")}  # fmt: skip
    settings |= {"paths": list(job.paths), "lr": lr, "warmup_steps": warmup, "steps_per_epoch": per_epoch,
                 "pages_train": [f"{p.doc.source}#{p.number}" for p in training],
                 "pages_validation": [f"{p.doc.source}#{p.number}" for p in validation],
                 "dpi": job.page_options.dpi, "max_patches": max_patches}  # fmt: skip
    if job.resume:
        check_resumable(job.run_dir, settings)
    torch.manual_seed(job.seed)
    model = _build_model(job, device, dtype, resume_from, reporter)
    model.train()
    examples = PageExamples(processor, job.task, job.page_options, max_patches)
    pad_id = processor.tokenizer.pad_token_id
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    scheduler = make_scheduler(optimizer, warmup, horizon)
    metrics = job.run_dir / "metrics.jsonl"
    # Without a validation set, "best" follows the epoch's training loss and never stops the run.
    stopper = EarlyStopping(job.patience if validation else 10**9)
    step, epoch, done_in_epoch, elapsed, epoch_loss = 0, 1, 0, 0.0, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, done_in_epoch, elapsed = state["step"], state["epoch"], state["done_in_epoch"], state["seconds"]
        stopper.best, stopper.stale, epoch_loss = state["best"], state["stale"], state["epoch_loss"]
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        keep_metrics_until(metrics, step)
        reporter.info(f"resuming {job.run_dir} at step {step} (epoch {epoch})")
    else:
        write_atomic(metrics, "")
    write_atomic(job.run_dir / "config.json", json.dumps(settings, indent=2) + "\n")
    if job.eval_every is not None and not validation:
        reporter.info("--eval-every: no validation pages (see --val-split); evaluating by epoch training loss")
    max_steps = min(job.max_steps, horizon) if job.max_steps is not None else horizon
    reporter.info(f"training {job.method} on {len(training)} page(s), validating on {len(validation)}, {device}; "
                  f"{max_steps} steps, warm-up {warmup}")  # fmt: skip
    progress = TrainProgress(reporter, max_steps, step, device, sum(p.numel() for p in model.parameters()))
    started = time.monotonic() - elapsed
    stopped_early = False

    def training_state() -> dict:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "epoch": epoch, "done_in_epoch": done_in_epoch, "epoch_loss": epoch_loss, "seconds": time.monotonic() - started,
                "best": stopper.best, "stale": stopper.stale, "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip

    consistent = True  # False while an optimizer update is half applied: no save from there
    saved_step = step
    try:
        while epoch <= job.epochs and step < max_steps and not stopped_early:
            order = epoch_order(training, job.seed, epoch)
            batches = [order[i : i + job.batch_size] for i in range(0, len(order), job.batch_size)]
            groups = [batches[i : i + job.grad_accum] for i in range(0, len(batches), job.grad_accum)]
            while done_in_epoch < len(groups) and step < max_steps:
                losses = []
                for chunk in groups[done_in_epoch]:
                    batch = collate([examples.make(page) for page in chunk], pad_id)
                    batch["flattened_patches"] = batch["flattened_patches"].to(dtype)
                    loss = _loss(model, batch, device)
                    (loss / len(groups[done_in_epoch])).backward()
                    losses.append(float(loss))
                lr_used = scheduler.get_last_lr()[0]
                consistent = False
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step, done_in_epoch = step + 1, done_in_epoch + 1
                consistent = True
                loss_value = sum(losses) / len(losses)
                epoch_loss += loss_value
                record = {"step": step, "epoch": epoch, "loss": round(loss_value, 6),
                          "lr": lr_used, "seconds": round(time.monotonic() - started, 2)}  # fmt: skip
                epoch_end = done_in_epoch == len(groups)
                if validation and (step % job.eval_every == 0 if job.eval_every else epoch_end):
                    score, rate = _validate(model, validation, examples, pad_id, device, dtype, processor.tokenizer)
                    record |= {"val_loss": round(score, 6), "cer": None if rate is None else round(rate, 6)}
                    progress.evaluated(rate)
                    reporter.info(f"step {step}: validation loss {score:.4f}, CER "
                                  f"{'-' if rate is None else f'{100 * rate:.1f}%'}")  # fmt: skip
                elif not validation and epoch_end:
                    score = epoch_loss / len(groups)
                    record["epoch_train_loss"] = round(score, 6)
                else:
                    score = None
                append_metrics(metrics, record)
                progress.step(step, loss_value)
                if score is not None:
                    improved, stop = stopper.update(score)
                    if improved:
                        save_checkpoint(model, processor, job.run_dir, "best", job.model)
                    save_checkpoint(model, processor, job.run_dir, "last", job.model, training_state())
                    saved_step = step
                    if stop:
                        stopped_early = True
                        reporter.info(f"no better validation loss for {stopper.stale} evaluations: stopping early")
                        break
            if done_in_epoch == len(groups):
                epoch, done_in_epoch, epoch_loss = epoch + 1, 0, 0.0
        progress.close()
        if saved_step != step or not checkpoint_folder(job.run_dir, "last"):
            save_checkpoint(model, processor, job.run_dir, "last", job.model, training_state())
    except KeyboardInterrupt:
        progress.close()
        if consistent and saved_step != step:
            save_checkpoint(model, processor, job.run_dir, "last", job.model, training_state())
            saved_step = step
        raise TrainingInterrupted(f"interrupted at step {step}; last/ holds step {saved_step}: "
                                  f"continue with the same command and --resume {job.run_dir}") from None  # fmt: skip
    best = None if stopper.best == math.inf else stopper.best
    return TrainSummary(step, epoch if epoch <= job.epochs else job.epochs, best, stopped_early, job.run_dir,
                        tuple(failures))  # fmt: skip
