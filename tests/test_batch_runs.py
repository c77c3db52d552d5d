"""Long batch runs (issue: never lose work): resume, interruption, unwritable outputs,
input lists, --draw and progress output. The installed CLI runs in subprocesses."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time

import pytest
from PIL import Image

from conftest import KOSMOS25, run_cli
from images import multipage_tiff

pytestmark = [pytest.mark.cli, pytest.mark.model]


def _folder_of_images(folder, count, size=(400, 200)):
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.new("RGB", size, (index * 20 % 256, 255, 255)).save(folder / f"scan-{index:02d}.png")
    return folder


def test_rerun_skips_finished_outputs_without_loading_the_model(tmp_path, trained_model):
    scans = _folder_of_images(tmp_path / "scans", 3)
    out = tmp_path / "out"
    first = run_cli("ocr", str(scans), "-o", str(out), "--model", str(trained_model))
    assert first.returncode == 0 and "3 done, 0 skipped, 0 failed" in first.stderr
    (out / "scan-01.json").unlink()
    kept = (out / "scan-00.json").stat().st_mtime_ns
    second = run_cli("ocr", str(scans), "-o", str(out), "--model", str(trained_model))
    assert second.returncode == 0 and "1 done, 2 skipped, 0 failed" in second.stderr
    assert (out / "scan-00.json").stat().st_mtime_ns == kept
    # Everything done: the model is not even loaded (this path does not exist).
    third = run_cli("ocr", str(scans), "-o", str(out), "--model", str(tmp_path / "no-model"))
    assert third.returncode == 0 and "0 done, 3 skipped" in third.stderr
    redo = run_cli("ocr", str(scans), "-o", str(out), "--model", str(trained_model), "--overwrite")
    assert redo.returncode == 0 and "3 done, 0 skipped" in redo.stderr
    assert (out / "scan-00.json").stat().st_mtime_ns != kept


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_finished_files_and_rerun_completes(tmp_path, random_model, signum):
    scans = _folder_of_images(tmp_path / "scans", 8)
    out = tmp_path / "out"
    args = [str(KOSMOS25), "ocr", str(scans), "-o", str(out), "--model", str(random_model),
            "--batch-size", "1", "--max-new-tokens", "250", "--dtype", "float32"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while not (out.exists() and any(p.suffix == ".json" for p in out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted:" in stderr and "run the same command again" in stderr
    files = sorted(out.iterdir())
    assert all(p.suffix == ".json" for p in files), files  # no temporary or partial files
    for path in files:
        json.loads(path.read_text())
    done = len(files)
    assert 1 <= done < 8
    rerun = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert rerun.returncode == 0, rerun.stderr
    assert f"{8 - done} done, {done} skipped, 0 failed" in rerun.stderr
    assert len(list(out.iterdir())) == 8


def test_unwritable_output_fails_before_any_work(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    # The model path does not exist either: the output check comes first.
    result = run_cli("ocr", str(tmp_path / "a.png"), "-o", str(blocker / "out"), "--model", str(tmp_path / "none"))
    assert result.returncode == 4, result.stderr
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr
    assert blocker.read_text() == "a file, not a folder"


@pytest.fixture
def small_filesystem(tmp_path):
    """Mount a 64 KiB tmpfs (root only): a real read-only or full file system for tests."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()

    def mount(options: str):
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64k,{options}", "tmpfs", str(mount_point)],
                              capture_output=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        return mount_point

    yield mount
    subprocess.run(["umount", str(mount_point)], capture_output=True)


def test_read_only_output_folder(tmp_path, trained_model, small_filesystem):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    out = small_filesystem("ro")
    result = run_cli("ocr", str(tmp_path / "a.png"), "-o", str(out), "--model", str(trained_model))
    assert result.returncode == 4, result.stderr
    assert "cannot write" in result.stderr and "Read-only file system" in result.stderr
    assert list(out.iterdir()) == []


def test_full_disk_leaves_nothing_half_written(tmp_path, trained_model, small_filesystem):
    Image.new("RGB", (400, 200)).save(tmp_path / "a.png")
    out = small_filesystem("rw")
    (out / "a.json").write_text("previous result\n")
    with open(out / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 1024)
        except OSError:
            pass  # the file system is full
    result = run_cli("ocr", str(tmp_path / "a.png"), "-o", str(out), "--model", str(trained_model), "--overwrite")
    assert result.returncode == 4, result.stderr
    assert "No space left on device" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "filler"]
    assert (out / "a.json").read_text() == "previous result\n"  # the old complete file is untouched


def test_files_from_with_spaces_unicode_and_nul(tmp_path, trained_model):
    folder = tmp_path / "my scans"
    folder.mkdir()
    names = ["reçu du café.png", "receipt 2.png"]
    for name in names:
        Image.new("RGB", (400, 200), "white").save(folder / name)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{folder / name}\n" for name in names), encoding="utf-8")
    result = run_cli("ocr", "--files-from", str(listing), "-f", "tsv", "--model", str(trained_model))
    assert result.returncode == 0, result.stderr
    sources = {row.split("\t")[0] for row in result.stdout.splitlines()[1:]}
    assert sources == {str(folder / name) for name in names}
    nul_list = "".join(f"{folder / name}\0" for name in names).encode()
    out = tmp_path / "out"
    from_stdin = run_cli("ocr", "--files-from", "-", "-0", "-o", str(out), "--model", str(trained_model), stdin=nul_list)
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert sorted(p.name for p in out.iterdir()) == ["receipt 2.json", "reçu du café.json"]


def test_draw_saves_pages_with_boxes_at_page_size(tmp_path, trained_model):
    multipage_tiff(tmp_path / "pages.tiff")
    result = run_cli("ocr", str(tmp_path / "pages.tiff"), "--draw", str(tmp_path / "draw"), "--model", str(trained_model))
    assert result.returncode == 0, result.stderr
    sizes = {}
    for path in sorted((tmp_path / "draw").iterdir()):
        with Image.open(path) as image:
            sizes[path.name] = image.size
            colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}
            assert (220, 20, 60) in colours  # box outlines drawn
    assert sizes == {"pages-p1.png": (400, 200), "pages-p2.png": (200, 400), "pages-p3.png": (300, 300)}
    refused = run_cli("md", str(tmp_path / "pages.tiff"), "--draw", str(tmp_path / "d2"), "--model", str(trained_model))
    assert refused.returncode == 2 and "--draw" in refused.stderr


def test_progress_plain_without_terminal_and_quiet(tmp_path, trained_model):
    scans = _folder_of_images(tmp_path / "scans", 2)
    plain = run_cli("ocr", str(scans), "-o", str(tmp_path / "o1"), "--model", str(trained_model))
    assert "\x1b[" not in plain.stderr and "━" not in plain.stderr  # no bar, no terminal codes
    assert "[1/2]" in plain.stderr and "[2/2]" in plain.stderr and "pages/min" in plain.stderr
    quiet = run_cli("ocr", str(scans), str(tmp_path / "gone.png"), "-q", "-o", str(tmp_path / "o2"),
                    "--model", str(trained_model))  # fmt: skip
    assert quiet.stderr.splitlines() == [f"kosmos25: error: {tmp_path / 'gone.png'}: no such file or directory"]


def test_progress_bar_on_a_terminal(tmp_path, trained_model):
    scans = _folder_of_images(tmp_path / "scans", 2)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(KOSMOS25), "ocr", str(scans), "-o", str(tmp_path / "out"), "--model", str(trained_model)],
        stdout=subprocess.DEVNULL, stderr=follower, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"},
    )  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=120)
    os.close(leader)
    screen = b"".join(chunks).decode("utf-8", errors="replace")
    assert proc.returncode == 0
    assert "files" in screen and "pages/min" in screen and "━" in screen
    assert "2 done, 0 skipped, 0 failed" in screen
