"""A run folder's files: its checkpoints (`best/`, `last/`), saved and loaded atomically,
`metrics.jsonl`, and the check that `--resume` continues the same run (`config.json`).

A checkpoint is written into a hidden temporary folder next to its place, then renamed into
place; the folder it replaces is first renamed aside (`.NAME.old`) and removed last. A run
that fails or is killed while saving leaves the previous checkpoint whole: as `NAME/`, or
(killed between the two renames) as `.NAME.old/`, which `checkpoint_folder` finds.

`last/` also holds `training_state.pt`: optimizer, scheduler, step, position in the epoch,
early-stopping state and random-number states, so `--resume` continues where it stopped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import OutputFailed, UsageError
from ..outputs.files import write_atomic

STATE_FILE = "training_state.pt"


def checkpoint_folder(run_dir: Path, name: str) -> Path | None:
    """The complete checkpoint `name` in `run_dir`, or None."""
    for folder in (run_dir / name, run_dir / f".{name}.old"):
        if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
            return folder
    return None


def save_checkpoint(model, processor, run_dir: Path, name: str, base_model: str, state: dict | None = None) -> Path:
    """Write `run_dir/name` atomically: weights (or adapter), processor and, if given, the training state."""
    import torch

    from ..model.loading import ADAPTER_CONFIG

    final, staging, old = run_dir / name, run_dir / f".{name}.tmp", run_dir / f".{name}.old"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        adapter = staging / ADAPTER_CONFIG
        if adapter.is_file() and Path(base_model).expanduser().is_dir():
            # The adapter names its base model; an absolute path keeps it loadable from anywhere.
            config = json.loads(adapter.read_text())
            config["base_model_name_or_path"] = str(Path(base_model).expanduser().resolve())
            write_atomic(adapter, json.dumps(config, indent=2) + "\n")
        if state is not None:
            torch.save(state, staging / STATE_FILE)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise OutputFailed(f"cannot save the model to {final}: {exc.strerror or exc}") from None
    finally:
        # A failed or interrupted save leaves no half-written folder (after success this is gone already).
        shutil.rmtree(staging, ignore_errors=True)
    return final


def load_state(run_dir: Path) -> tuple[Path, dict]:
    """(the `last/` folder, its training state) of a run to resume."""
    import torch

    folder = checkpoint_folder(run_dir, "last")
    if folder is None or not (folder / STATE_FILE).is_file():
        raise UsageError(f"--resume {run_dir}: no last/ checkpoint with a training state there")
    try:
        # Our own file (optimizer tensors, RNG states, plain Python values); not from elsewhere.
        return folder, torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise UsageError(f"--resume {run_dir}: cannot read {folder / STATE_FILE}: {exc}") from None


def append_metrics(path: Path, record: dict) -> None:
    """Add one step's record to `metrics.jsonl` (one JSON object per line)."""
    try:
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except OSError as exc:
        raise OutputFailed(f"cannot write {path}: {exc.strerror or exc}") from None


# Settings a resumed run must share with the run it continues (the rest may change, e.g. --max-steps).
RESUME_KEYS = ("task", "model", "method", "lr", "epochs", "batch_size", "grad_accum", "val_split", "seed",
                "lora_rank", "lora_alpha", "lora_dropout", "lora_vision", "warmup_steps", "max_patches",
                "pages_train", "pages_validation")  # fmt: skip


def check_resumable(run_dir: Path, settings: dict) -> None:
    """Refuse (UsageError) to resume a run whose `config.json` has other values of `RESUME_KEYS`."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--resume {run_dir}: cannot read its config.json: {exc}") from None
    changed = [key for key in RESUME_KEYS if key in saved and saved[key] != settings.get(key)]
    if changed:
        raise UsageError(f"--resume {run_dir}: this command changes {', '.join(changed)} "
                         f"(the run has {', '.join(f'{k}={saved[k]!r}' for k in changed)}); give the run's settings")  # fmt: skip


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop records past the resumed step (written after the last save of an interrupted run)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    except OSError as exc:
        raise OutputFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a line cut short when the run was killed while writing it
    write_atomic(path, "".join(f"{line}\n" for line in kept))
