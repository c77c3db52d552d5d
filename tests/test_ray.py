"""`--ray`: the same run on Ray workers gives the same files, messages and exit codes as
a local run, resumes, survives a worker killed mid-run or while loading, and joins a separately
started cluster with `--ray auto`. Every test shares one local Ray instance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import KOSMOS25, run_cli
from images import multipage_pdf, pdf_with_big_page

pytestmark = [pytest.mark.cli, pytest.mark.model, pytest.mark.ray]

FLOAT32 = ("--dtype", "float32", "--dpi", "100")


def _scans(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for index in range(2):
        Image.new("RGB", (300, 200), (index * 60, 255, 255)).save(folder / f"img{index}.png")
    multipage_pdf(folder / "long.pdf", pages=5)
    pdf_with_big_page(folder / "big.pdf")
    (folder / "bad.png").write_bytes(b"")
    return folder


def _images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for index in range(count):
        Image.new("RGB", (300, 200), (index * 40, 255, 255)).save(folder / f"scan-{index}.png")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    """The outputs (not the hidden sidecars: their unrounded confidences may differ in the
    last bits with how pages shared batches, which the outputs' 4 decimals do not show)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("[!.]*")) if p.is_file()}


def _errors(stderr: str) -> list[str]:
    return sorted(line for line in stderr.splitlines() if ": error: " in line)


def test_ray_run_equals_local_run_and_resumes(tmp_path, trained_model, ray_address):
    scans = _scans(tmp_path / "scans")
    common = ("ocr", str(scans), "--model", str(trained_model), "--max-pixels", "500000", *FLOAT32)
    local = run_cli(*common, "-o", str(tmp_path / "local"))
    env = {"RAY_ADDRESS": ray_address}
    # --pages-per-task 2: the 5-page PDF is read as 3 ranges by different workers.
    ray = run_cli(*common, "-o", str(tmp_path / "ray"), "--ray", "--workers", "2", "--pages-per-task", "2", env=env)
    assert local.returncode == ray.returncode == 1, ray.stderr
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")  # byte for byte
    assert (tmp_path / "ray" / ".big.json.failed-pages.json").is_file()
    assert _errors(ray.stderr.replace("/ray/", "/OUT/")) == _errors(local.stderr.replace("/local/", "/OUT/"))
    assert f"error: {scans / 'bad.png'}: file is empty" in ray.stderr
    assert f"error: {scans / 'big.pdf'}: page 2: at 100 dpi" in ray.stderr
    assert "in each of 2 Ray workers" in ray.stderr and "INFO" not in ray.stderr
    for run in (local, ray):
        assert "3 done, 0 skipped, 2 failed; 9 pages" in run.stderr and "1 page failed" in run.stderr

    # Resume: outputs that exist are not even scheduled (no model, no Ray workers).
    (scans / "bad.png").unlink()
    (tmp_path / "ray" / ".big.json.failed-pages.json").unlink()
    again = run_cli("ocr", str(scans), "--model", str(tmp_path / "no-model"), "-o", str(tmp_path / "ray"),
                    "--ray", env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "0 done, 4 skipped, 0 failed" in again.stderr and "Ray worker" not in again.stderr


def test_a_killed_worker_is_replaced_and_its_work_redone(tmp_path, random_model, ray_address):
    scans = _images(tmp_path / "scans", 6)
    args = [str(KOSMOS25), "ocr", str(scans), "-o", str(tmp_path / "out"), "--model", str(random_model),
            "--max-new-tokens", "300", "--batch-size", "1", "--ray", "--workers", "2"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ray_address}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        killed = _busy_worker_pid()
        time.sleep(0.1)
    assert killed is not None, "no worker was seen reading"
    os.kill(killed, signal.SIGKILL)  # a worker dies in the middle of a task
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert "6 done, 0 skipped, 0 failed" in stderr
    assert len(list((tmp_path / "out").glob("*.json"))) == 6


def test_a_file_that_keeps_killing_workers_is_failed_after_3_tries(tmp_path, random_model, ray_address):
    Image.new("RGB", (300, 200), "white").save(tmp_path / "poison.png")
    args = [str(KOSMOS25), "ocr", str(tmp_path / "poison.png"), "-o", str(tmp_path / "out"),
            "--model", str(random_model), "--max-new-tokens", "2000", "--ray", "--workers", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ray_address}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    kills, deadline = 0, time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        pid = _busy_worker_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)  # every worker that reads it dies
            kills += 1
            while _busy_worker_pid() == pid:
                time.sleep(0.05)
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert kills == 3
    assert f"kosmos25: error: {tmp_path / 'poison.png'}: gave up after 3 tries: a worker died while reading it" in stderr
    assert "0 done, 0 skipped, 1 failed" in stderr and not (tmp_path / "out" / "poison.json").exists()


def _busy_worker_pid(method: str = "read") -> int | None:
    """A Ray worker process in the middle of `KosmosWorker.<method>` (Ray names the process
    so; `__init__`: loading the model)."""
    pids = _worker_pids(method)
    return pids[0] if pids else None


def _worker_pids(method: str) -> list[int]:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in listing.splitlines():
        pid, _, command = line.strip().partition(" ")
        if command.split(" ")[0] == f"ray::KosmosWorker.{method}":
            pids.append(int(pid))
    return pids


def _kill_loading_workers(args: list[str], env: dict, times: int) -> tuple[subprocess.Popen, str, int]:
    """Run `args`, killing up to `times` workers while they load the model."""
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    kills, deadline = 0, time.monotonic() + 120
    while kills < times and proc.poll() is None and time.monotonic() < deadline:
        pid = _busy_worker_pid("__init__")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            kills += 1
            while _busy_worker_pid("__init__") == pid:
                time.sleep(0.02)
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=240)
    return proc, stderr, kills


def test_a_worker_killed_while_loading_is_replaced_and_one_that_keeps_dying_ends_the_run(
    tmp_path, random_model, ray_address
):
    Image.new("RGB", (300, 200), "white").save(tmp_path / "scan.png")
    args = [str(KOSMOS25), "ocr", str(tmp_path / "scan.png"), "--model", str(random_model),
            "--max-new-tokens", "20", "--ray", "--workers", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ray_address}

    # Once: the replacement loads and reads the file; no file is charged a try.
    proc, stderr, kills = _kill_loading_workers([*args, "-o", str(tmp_path / "once")], env, times=1)
    assert kills == 1 and proc.returncode == 0, stderr
    assert "1 done, 0 skipped, 0 failed" in stderr and (tmp_path / "once" / "scan.json").is_file()

    # Three times in a row: the model cannot be brought up; exit 3 with one line, nothing written.
    proc, stderr, kills = _kill_loading_workers([*args, "-o", str(tmp_path / "never")], env, times=3)
    assert kills == 3 and proc.returncode == 3, stderr
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert errors == [errors[0]] and errors[0].startswith(
        "kosmos25: error: --ray: workers died while loading the model, 3 times in a row ("
    ), stderr
    assert not (tmp_path / "never").exists() or not list((tmp_path / "never").iterdir())


def test_a_place_in_the_pool_whose_workers_keep_dying_while_loading_is_given_up(tmp_path, random_model, ray_address):
    scans = _images(tmp_path / "scans", 3)
    args = [str(KOSMOS25), "ocr", str(scans), "-o", str(tmp_path / "out"), "--model", str(random_model),
            "--max-new-tokens", "20", "--ray", "--workers", "2"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ray_address}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    # Both workers load at once: one is spared, and every worker loading in the other's place dies.
    spared, kills, deadline = None, 0, time.monotonic() + 120
    while kills < 3 and proc.poll() is None and time.monotonic() < deadline:
        loading = _worker_pids("__init__")
        if spared is None and len(loading) == 2:
            spared = loading[0]
        for pid in loading if spared is not None else ():
            if pid != spared:
                os.kill(pid, signal.SIGKILL)
                kills += 1
                while pid in _worker_pids("__init__"):
                    time.sleep(0.02)
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=240)
    assert kills == 3 and proc.returncode == 0, stderr
    assert ("kosmos25: warning: --ray: a worker died while loading the model 3 times in a row; going on with 1 worker"
            in stderr.splitlines())  # fmt: skip
    assert "3 done, 0 skipped, 0 failed" in stderr and len(list((tmp_path / "out").glob("*.json"))) == 3


def test_joins_a_separately_started_cluster_with_ray_auto(tmp_path, trained_model, ray_address):
    ray_bin = Path(sys.executable).parent / "ray"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
         "--port", "0", "--include-dashboard", "false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    current = Path("/tmp/ray/ray_current_cluster")
    try:
        deadline = time.monotonic() + 60
        while not current.exists():
            assert head.poll() is None and time.monotonic() < deadline, head.stderr.read() if head.poll() else ""
            time.sleep(0.2)
        scans = tmp_path / "scans"
        scans.mkdir()
        Image.new("RGB", (300, 200), "white").save(scans / "a.png")
        result = run_cli("ocr", str(scans), "-o", str(tmp_path / "out"), "--model", str(trained_model),
                         "--ray", "auto", "--workers", "1", env={"RAY_ADDRESS": None})  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "1 done" in result.stderr and (tmp_path / "out" / "a.json").is_file()
    finally:
        # Its own process group: this cluster only (never `ray stop`: it ends every Ray on the
        # machine). SIGINT stops it in about a second; SIGTERM takes half a minute.
        os.killpg(head.pid, signal.SIGINT)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        current.unlink(missing_ok=True)  # else later ray.init() calls try to join the dead cluster
