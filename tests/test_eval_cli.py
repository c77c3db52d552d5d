"""`kosmos25 eval` end to end: the installed command, the tiny trained checkpoint (it answers
every image with tiny_checkpoint.TRAINED_OCR / TRAINED_MD), ground truth in files."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import run_cli
from tiny_checkpoint import TRAINED_MD

pytestmark = [pytest.mark.cli, pytest.mark.model]

# What the trained checkpoint reads on a 400x200 image, in page pixels (see test_cli.py).
ANSWER = [("TOTAL 12.50", [18, 9, 200, 45]), ("Clipped box", [227, 114, 400, 200]), ("Degenerate box", None)]


def truth_json(lines, width=400, height=200) -> str:
    page = {"page": 1, "width": width, "height": height, "lines": [{"text": t, "bbox": b} for t, b in lines]}
    return json.dumps({"source": "x", "task": "ocr", "pages": [page]})


def image(path, size=(400, 200)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path)
    return path


def test_ground_truth_equal_to_the_answer_scores_perfectly(tmp_path, trained_model):
    image(tmp_path / "receipt.png")
    # The ground truth is what `kosmos25 ocr -o` writes for it: the exact names eval looks for.
    made = run_cli("ocr", str(tmp_path / "receipt.png"), "-o", str(tmp_path), "--model", str(trained_model))
    assert made.returncode == 0, made.stderr
    result = run_cli("eval", str(tmp_path / "receipt.png"), "--model", str(trained_model),
                     "--report", str(tmp_path / "report.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    summary = report["summary"]
    assert summary["cer"] == 0 and summary["wer"] == 0 and summary["wer_unordered"] == 0
    assert summary["line_precision"] == summary["line_recall"] == summary["line_f1"] == 1.0
    assert summary["mean_iou"] == 1.0 and summary["line_cer"] == 0
    assert summary["unboxed_predicted_lines"] == summary["unboxed_true_lines"] == 1  # "Degenerate box"
    [page] = report["pages"]
    assert page["source"] == str(tmp_path / "receipt.png") and page["page"] == 1
    assert page["first_difference"] is None and report["failures"] == []
    assert page["truncated"] is False and page["looping"] is False
    assert "receipt.png" in result.stdout and "0.00%" in result.stdout and "1.000" in result.stdout


def test_a_changed_word_gives_the_hand_computed_scores(tmp_path, trained_model):
    image(tmp_path / "receipt.png")
    changed = [ANSWER[0], ("Clipped bag", ANSWER[1][1]), ANSWER[2]]
    (tmp_path / "receipt.png.json").write_text(truth_json(changed))
    result = run_cli("eval", str(tmp_path / "receipt.png"), "--model", str(trained_model),
                     "--report", str(tmp_path / "report.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "report.json").read_text())["summary"]
    # "TOTAL 12.50\nClipped bag\nDegenerate box": 38 characters; "box" for "bag": 2 substitutions.
    assert (summary["char_edits"], summary["chars"]) == (2, 38)
    assert summary["cer"] == pytest.approx(2 / 38, abs=1e-6)
    assert summary["wer"] == pytest.approx(1 / 6, abs=1e-6)
    assert summary["wer_unordered"] == pytest.approx(1 / 6, abs=1e-6)
    assert summary["line_f1"] == 1.0
    assert summary["line_cer"] == pytest.approx(2 / 22, abs=1e-6)  # the two boxed lines: 11 + 11 characters
    assert "predicted: 'Clipped box'" in result.stdout and "truth:     'Clipped bag'" in result.stdout


def test_bad_pairs_are_reported_before_the_model_loads_and_the_rest_scored(tmp_path, trained_model):
    data = tmp_path / "data"
    image(data / "good.png")
    (data / "good.json").write_text(truth_json(ANSWER))
    image(data / "missing.png")
    image(data / "outside.png")
    (data / "outside.json").write_text(truth_json([("x", [300, 100, 450, 150])]))
    image(data / "sub" / "broken.png")
    (data / "sub" / "broken.png.xml").write_text("<alto><unclosed>")
    image(data / "long.png")
    (data / "long.txt").write_text("x" * 120 + "\n")  # byte-level tokenizer: 120 + newline + end token
    result = run_cli("eval", str(data), "--model", str(trained_model), "--report", str(tmp_path / "r.tsv"),
                     "--max-new-tokens", "100")  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert any("missing.png: no ground truth found" in line for line in errors), errors
    assert any("outside.png: page 1" in line and "outside the 400x200 page" in line for line in errors), errors
    assert any("broken.png.xml: not well-formed XML" in line for line in errors), errors
    assert any("long.png: page 1: its ground truth takes 122 tokens, more than --max-new-tokens 100" in line
               for line in errors), errors  # fmt: skip
    # Every check happened before the model was loaded.
    model_line = next(i for i, line in enumerate(result.stderr.splitlines()) if "on cpu" in line)
    assert all(result.stderr.splitlines().index(line) < model_line for line in errors[:4])
    rows = [row.split("\t") for row in (tmp_path / "r.tsv").read_text().splitlines()]
    assert rows[0][:5] == ["source", "page", "cer", "wer", "wer_unordered"]
    assert [(row[0], row[1], row[2]) for row in rows[1:]] == [(str(data / "good.png"), "1", "0.0")]


def test_nothing_to_score_loads_no_model(tmp_path, trained_model):
    image(tmp_path / "receipt.png")
    (tmp_path / "receipt.txt").write_text("TOTAL 12.50\nClipped box\nDegenerate box\n")
    result = run_cli("eval", str(tmp_path / "receipt.png"), "--model", str(trained_model), "--max-new-tokens", "20")
    assert result.returncode == 1
    assert "its ground truth takes 40 tokens, more than --max-new-tokens 20" in result.stderr
    assert "on cpu" not in result.stderr  # nothing left to read: the model never loaded
    assert result.stdout.strip() == "no page was scored"


def test_markdown_with_a_baseline_side_by_side(tmp_path, trained_model, random_model):
    image(tmp_path / "receipt.png")
    (tmp_path / "receipt.md").write_text(TRAINED_MD)
    result = run_cli("eval", str(tmp_path / "receipt.png"), "--task", "md", "--model", str(trained_model),
                     "--baseline", str(random_model), "--max-new-tokens", "40",
                     "--report", str(tmp_path / "r.json"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["summary"]["cer"] == 0 and "line_f1" not in report["summary"]
    assert report["baseline"]["model"] == str(random_model) and report["baseline"]["cer"] > 0
    assert report["pages"][0]["baseline"]["cer"] == report["baseline"]["cer"]
    assert "baseline CER" in result.stdout


def test_readme_eval_options_match_help():
    import re
    from pathlib import Path

    from typer.main import get_command

    from kosmos_cli import cli
    from kosmos_cli.cli import options

    command = get_command(cli.app).commands["eval"]
    in_help = {opt for param in command.params if param.rich_help_panel == options.EVAL for opt in param.opts}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## How good is it on my documents?") :]
    table = section[section.index("| option | default | meaning |") :].split("\n\n", 1)[0]
    in_readme = {re.match(r"\| `(--[\w-]+)", row).group(1) for row in table.splitlines()[3:]}
    assert in_readme == in_help
    # Every other option of eval is one of ocr's, with the same meaning.
    ocr = {opt for param in get_command(cli.app).commands["ocr"].params for opt in param.opts}
    assert {opt for param in command.params if param.rich_help_panel != options.EVAL for opt in param.opts} <= ocr


def test_unusable_report_name_is_a_usage_error(tmp_path):
    image(tmp_path / "a.png")
    result = run_cli("eval", str(tmp_path / "a.png"), "--report", str(tmp_path / "r.csv"))
    assert result.returncode == 2 and "use a .json or .tsv file name" in result.stderr
