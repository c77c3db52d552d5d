"""Training: labels masked by position, the split, and fine-tunes of the tiny checkpoint
through the installed command (full: learns a new answer that eval then scores at CER 0;
LoRA: an adapter that --model loads and merge folds in)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest
from PIL import Image

from conftest import run_cli
from kosmos_cli.evaluation.groundtruth import PageTruth
from kosmos_cli.inputs.documents import Document, PageGeometry
from kosmos_cli.training.examples import IGNORE, Example, collate, sequence_and_labels
from kosmos_cli.training.loop import EarlyStopping
from kosmos_cli.training.pages import TrainPage, split_pages

NEW_ANSWER = [("HELLO 7", [18, 9, 200, 45])]


def test_labels_are_masked_by_position():
    prompt = (0, 7, 0, 0, 8, 5)  # <s><image> <s><s> </image> <ocr>: the image placeholder is <s> (id 0)
    target = (0, 42, 2)  # a target token equal to the placeholder's id still carries loss: position decides
    ids, labels = sequence_and_labels(prompt, target)
    assert ids == [0, 7, 0, 0, 8, 5, 0, 42, 2]
    assert labels == [IGNORE] * 6 + [0, 42, 2]


def test_collate_pads_right_without_loss_or_attention():
    import torch

    patches = torch.zeros(4, 3)
    short = Example(patches, (0, 7, 0, 8, 5), (0, -1, 1, -1, 0), (11, 2))
    long = Example(patches, (0, 7, 0, 8, 5), (0, -1, 1, -1, 0), (11, 12, 13, 2))
    batch = collate([short, long], pad_id=1)
    assert batch["input_ids"].tolist() == [[0, 7, 0, 8, 5, 11, 2, 1, 1], [0, 7, 0, 8, 5, 11, 12, 13, 2]]
    assert batch["labels"].tolist() == [[IGNORE] * 5 + [11, 2, IGNORE, IGNORE], [IGNORE] * 5 + [11, 12, 13, 2]]
    assert batch["attention_mask"].tolist() == [[1] * 7 + [0, 0], [1] * 9]
    assert batch["image_embeds_position_mask"].tolist()[0] == [0, -1, 1, -1, 0, 0, 0, 0, 0]


def test_loss_comes_from_target_positions_only(random_model):
    """The model's loss on a collated batch equals cross-entropy over the target (and end
    token) positions alone, and differs from a loss that would include the prompt and image."""
    import torch
    from transformers import AutoProcessor, Kosmos2_5ForConditionalGeneration

    from kosmos_cli.training.pages import PageExamples

    processor = AutoProcessor.from_pretrained(random_model)
    model = Kosmos2_5ForConditionalGeneration.from_pretrained(random_model).eval()
    examples = PageExamples(processor, "ocr", __import__("kosmos_cli").inputs.documents.PageOptions(), 256)
    target = tuple(processor.tokenizer("AB", add_special_tokens=False).input_ids) + (processor.tokenizer.eos_token_id,)
    patches = processor.image_processor(images=[Image.new("RGB", (64, 64), "white")], max_patches=256,
                                        return_tensors="pt")["flattened_patches"][0]  # fmt: skip
    batch = collate([Example(patches, examples.prompt_ids, examples.image_mask, target)], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        output = model(**batch)
    logits, ids = output.logits[0], batch["input_ids"][0]
    start = len(examples.prompt_ids)
    losses = torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")
    # The token at position p is predicted from position p-1: targets sit at start .. end.
    assert output.loss.item() == pytest.approx(losses[start - 1 :].mean().item(), rel=1e-5)
    assert output.loss.item() != pytest.approx(losses.mean().item(), rel=1e-3)


def test_split_is_seeded_and_holds_out_at_least_one_page():
    doc = Document("a.pdf", Path("a.pdf"), PurePosixPath("a"))
    pages = [TrainPage(doc, n, PageTruth(), PageGeometry(n, 10, 10, None)) for n in range(1, 11)]
    training, validation = split_pages(pages, 0.2, seed=3)
    assert len(validation) == 2 and len(training) == 8 and not set(training) & set(validation)
    assert split_pages(pages, 0.2, seed=3) == (training, validation)
    assert len(split_pages(pages[:2], 0.01, seed=0)[1]) == 1
    assert split_pages(pages, 0.0, seed=0) == (pages, [])


def test_early_stopping_waits_patience_evaluations():
    stopper = EarlyStopping(patience=2)
    assert [stopper.update(loss) for loss in (3.0, 2.0, 2.5, 1.5, 1.6, 1.5)] == [
        (True, False), (True, False), (False, False), (True, False), (False, False), (False, True)
    ]
    assert stopper.best == 1.5


def _new_answer_image(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (400, 200), "white").save(folder / "new.png")
    page = {"page": 1, "width": 400, "height": 200, "lines": [{"text": t, "bbox": b} for t, b in NEW_ANSWER]}
    (folder / "new.json").write_text(json.dumps({"pages": [page]}))
    return folder / "new.png"


@pytest.mark.cli
@pytest.mark.model
def test_full_fine_tune_learns_a_new_answer_and_eval_scores_it(tmp_path, trained_model):
    image = _new_answer_image(tmp_path / "data")  # the checkpoint answers "TOTAL 12.50 ..." before training
    run = tmp_path / "run"
    result = run_cli("train", str(image), "-o", str(run), "--model", str(trained_model), "--method", "full",
                     "--epochs", "30", "--val-split", "0", "--lr", "1e-2", "--warmup-steps", "0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["best", "config.json", "last", "metrics.jsonl"]
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "full" and config["pages_train"] == [f"{image}#1"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["loss"] for r in records]
    assert len(steps) == 30 and steps[-1] < steps[0] / 10
    after = run_cli("eval", str(image), "--model", str(run / "best"), "--report", str(tmp_path / "after.json"))
    assert after.returncode == 0, after.stderr
    summary = json.loads((tmp_path / "after.json").read_text())["summary"]
    assert summary["cer"] == 0 and summary["line_f1"] == 1.0


@pytest.mark.cli
@pytest.mark.model
def test_lora_adapter_loads_through_model_and_merges(tmp_path, trained_model):
    image = _new_answer_image(tmp_path / "data")
    Image.new("RGB", (300, 300), "white").save(tmp_path / "data" / "other.png")
    (tmp_path / "data" / "other.txt").write_text("HELLO 7\n")  # text-only ground truth trains too
    run = tmp_path / "run"
    result = run_cli("train", str(tmp_path / "data"), "-o", str(run), "--model", str(trained_model),
                     "--epochs", "2", "--val-split", "0.5", "--lora-rank", "4", "--lora-alpha", "16",
                     "--eval-every", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all("loss" in r and "lr" in r for r in records)
    assert [r["epoch"] for r in records if "val_loss" in r] == [1, 2]  # one page trains, one validates
    assert all(0 <= r["cer"] for r in records)  # validation CER on every step validated
    assert "step 1/2: loss" in result.stderr and "LoRA on " in result.stderr  # plain progress off a terminal
    assert len(json.loads((run / "config.json").read_text())["pages_validation"]) == 1
    adapter = json.loads((run / "best" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(trained_model.resolve()) and adapter["lora_alpha"] == 16
    read = run_cli("ocr", str(image), "--model", str(run / "best"))
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["pages"][0]["lines"]
    merged = run_cli("merge", str(run / "best"), "-o", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()


def test_readme_training_options_match_help():
    import re

    from typer.main import get_command

    from kosmos_cli import cli
    from kosmos_cli.cli import options

    command = get_command(cli.app).commands["train"]
    in_help = {opt for param in command.params if param.rich_help_panel == options.TRAINING for opt in param.opts}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Teaching it my documents") :]
    table = section[section.index("| option | default | meaning |") :].split("\n\n", 1)[0]
    assert {re.match(r"\| `(--[\w-]+)", row).group(1) for row in table.splitlines()[3:]} == in_help


def _pages_with_truth(folder: Path, count: int) -> Path:
    """`count` small pages, each with a one-line ground truth of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        Image.new("RGB", (200 + 40 * n, 120), "white").save(folder / f"p{n}.png")
        (folder / f"p{n}.txt").write_text(f"HELLO {n}\n")
    return folder


def _adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.cli
@pytest.mark.model
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, trained_model):
    """Stopped by --max-steps 2 in the middle of an epoch, resumed to step 4: the same adapter,
    bit for bit, as a run that went to step 4 at once (dropout on, so the random state counts)."""
    data = _pages_with_truth(tmp_path / "data", 3)
    common = ["--model", str(trained_model), "--val-split", "0", "--epochs", "2", "--lora-rank", "4",
              "--lora-dropout", "0.1", "--lr", "1e-3"]  # fmt: skip
    whole = run_cli("train", str(data), "-o", str(tmp_path / "whole"), "--max-steps", "4", *common)
    assert whole.returncode == 0, whole.stderr
    first = run_cli("train", str(data), "-o", str(tmp_path / "run"), "--max-steps", "2", *common)
    assert first.returncode == 0, first.stderr
    assert "LoRA on " in first.stderr
    assert (tmp_path / "run" / "last" / "training_state.pt").is_file()
    assert not list((tmp_path / "run").glob(".*"))  # no temporary or set-aside checkpoint left behind
    second = run_cli("train", str(data), "--resume", str(tmp_path / "run"), "--max-steps", "4", *common)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr and "at step 2" in second.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    expected = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    # Loss, learning rate and the epoch's training loss (step 3 ends epoch 1) as in the run that never stopped.
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in records] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in expected
    ]
    assert "epoch_train_loss" in records[2]
    got, want = _adapter_weights(tmp_path / "run" / "last"), _adapter_weights(tmp_path / "whole" / "last")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)


def test_resume_refuses_changed_settings(tmp_path):
    from kosmos_cli.errors import UsageError
    from kosmos_cli.training.state import check_resumable

    (tmp_path / "config.json").write_text(json.dumps({"lr": 1e-3, "epochs": 2, "max_steps": 2}))
    check_resumable(tmp_path, {"lr": 1e-3, "epochs": 2, "max_steps": 4})  # --max-steps may change
    with pytest.raises(UsageError, match="changes lr, epochs"):
        check_resumable(tmp_path, {"lr": 2e-3, "epochs": 3, "max_steps": 2})


@pytest.mark.cli
@pytest.mark.model
def test_sigterm_leaves_a_resumable_last_and_exits_130(tmp_path, trained_model):
    import signal
    import subprocess
    import time

    from conftest import KOSMOS25

    data = _pages_with_truth(tmp_path / "data", 1)
    run = tmp_path / "run"
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([str(KOSMOS25), "train", str(data), "-o", str(run), "--model", str(trained_model),
                                "--val-split", "0", "--epochs", "1000", "--lora-rank", "4"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / "last" / "training_state.pt").is_file():
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    message = err.strip().splitlines()[-1]
    assert "interrupted at step" in message and f"--resume {run}" in message
    assert (run / "last" / "training_state.pt").is_file() and (run / "last" / "adapter_model.safetensors").is_file()


def test_lora_targets_match_text_modules_and_vision_only_when_asked(random_model):
    from transformers import Kosmos2_5ForConditionalGeneration

    from kosmos_cli.training.lora import lora_targets, matching_modules, with_lora

    model = Kosmos2_5ForConditionalGeneration.from_pretrained(random_model)
    text = matching_modules(model, lora_targets(vision=False))
    both = matching_modules(model, lora_targets(vision=True))
    assert text and all(".text_model." in f".{name}" for name in text)
    vision = [name for name in both if name.startswith("vision_model.")]
    assert vision and set(both) == set(text) | set(vision)
    assert {name.rsplit(".", 1)[1] for name in vision} == {"query", "key", "value", "output", "wi_0", "wi_1", "wo"}
    wrapped, count = with_lora(model, rank=2, alpha=4, dropout=0.0, vision=True)
    assert count == len(both)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in wrapped.named_modules() if name.endswith(".lora_A")}
    assert len(adapted) == count


def test_schedule_warms_up_then_decays_to_zero():
    from kosmos_cli.training.schedule import default_warmup, lr_factor

    assert default_warmup(100) == 10 and default_warmup(3) == 0
    factors = [lr_factor(step, 2, 10) for step in range(10)]
    assert factors[0] == pytest.approx(1 / 3) and factors[1] == pytest.approx(2 / 3) and factors[2] == 1.0
    assert all(a >= b for a, b in zip(factors[2:], factors[3:])) and lr_factor(10, 2, 10) == 0.0


class _Saves:
    """Stands in for a model or processor: writes `config.json` holding `value`, or fails."""

    def __init__(self, value: str, fail: bool = False) -> None:
        self.value, self.fail = value, fail

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / "config.json").write_text(json.dumps({"value": self.value}))
        if self.fail:
            raise OSError(28, "No space left on device")


def test_failed_save_keeps_the_previous_checkpoint_whole(tmp_path):
    from kosmos_cli.errors import OutputFailed
    from kosmos_cli.training.state import checkpoint_folder, load_state, save_checkpoint

    save_checkpoint(_Saves("one"), _Saves("one"), tmp_path, "last", "base", state={"step": 1})
    with pytest.raises(OutputFailed, match="No space left"):
        save_checkpoint(_Saves("two", fail=True), _Saves("two"), tmp_path, "last", "base", state={"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert json.loads((tmp_path / "last" / "config.json").read_text())["value"] == "one"
    assert load_state(tmp_path)[1] == {"step": 1}
    (tmp_path / "last").rename(tmp_path / ".last.old")  # killed between the two renames
    assert checkpoint_folder(tmp_path, "last") == tmp_path / ".last.old"
    save_checkpoint(_Saves("three"), _Saves("three"), tmp_path, "last", "base", state={"step": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"] and load_state(tmp_path)[1] == {"step": 3}


def test_plain_progress_lines_and_the_cpu_note_for_a_large_model():
    import io

    from kosmos_cli.run.progress import PlainReporter
    from kosmos_cli.training.progress import TrainProgress

    stream = io.StringIO()
    progress = TrainProgress(PlainReporter(stream=stream), total=6, start_step=2, device="cpu", parameters=1_375_000_000)
    for step in (3, 4, 5):
        progress.step(step, 0.5)
    progress.evaluated(0.125)
    progress.step(6, 0.25)
    lines = stream.getvalue().splitlines()
    assert "step 3/6: loss 0.5000, validation CER -" in lines[0]
    assert "step 6/6: loss 0.2500, validation CER 12.5%" in lines[-1]
    notes = [line for line in lines if "a GPU is the practical place" in line]
    assert len(notes) == 1 and "1375M-parameter" in notes[0]
    small = io.StringIO()
    quiet = TrainProgress(PlainReporter(stream=small), total=9, start_step=0, device="cpu", parameters=5_000_000)
    for step in range(1, 6):
        quiet.step(step, 1.0)
    assert "GPU" not in small.getvalue()
