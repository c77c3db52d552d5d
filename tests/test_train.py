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
from kosmos_cli.training.loop import EarlyStopping, TrainPage, split_pages

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

    from kosmos_cli.training.loop import _Examples

    processor = AutoProcessor.from_pretrained(random_model)
    model = Kosmos2_5ForConditionalGeneration.from_pretrained(random_model).eval()
    examples = _Examples(processor, "ocr", __import__("kosmos_cli").inputs.documents.PageOptions(), 256)
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
                     "--epochs", "30", "--val-split", "0", "--lr", "3e-3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in run.iterdir()) == ["best", "config.json", "last", "metrics.jsonl"]
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "full" and config["pages_train"] == [f"{image}#1"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["train_loss"] for r in records if "train_loss" in r]
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
                     "--epochs", "2", "--val-split", "0.5", "--lora-rank", "4")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val_loss" in r] == [1, 2]  # one page trains, one validates
    assert len(json.loads((run / "config.json").read_text())["pages_validation"]) == 1
    adapter = json.loads((run / "best" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(trained_model.resolve())
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

    command = get_command(cli.app).commands["train"]
    in_help = {opt for param in command.params if param.rich_help_panel == cli.TRAINING for opt in param.opts}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Teaching it my documents") :]
    table = section[section.index("| option | default | meaning |") :].split("\n\n", 1)[0]
    assert {re.match(r"\| `(--[\w-]+)", row).group(1) for row in table.splitlines()[3:]} == in_help
