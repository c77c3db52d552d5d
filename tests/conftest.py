"""Shared fixtures: tiny KOSMOS-2.5 checkpoints and a way to run the installed CLI."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_checkpoint
from forked_cli import ForkedCommand

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "tiny-checkpoints"
KOSMOS25 = Path(sys.executable).parent / "kosmos25"


def pytest_configure(config) -> None:
    # Under pytest-xdist (`make test` runs one worker per core) each worker, and every
    # process it starts (the CLI, Ray's workers), uses one thread: two threads per worker
    # on a 2-core machine would fight over the cores. Set before torch is imported.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)


def _cached_checkpoint(kind: str, build) -> Path:
    """Build a checkpoint once per version of its recipe; reuse it across test runs.

    A lock file makes parallel test workers build it once: the others wait for it.
    """
    import fcntl

    import torch
    import transformers

    recipe = Path(tiny_checkpoint.__file__).read_bytes() + f"{torch.__version__}{transformers.__version__}".encode()
    target = CACHE / f"{kind}-{hashlib.sha256(recipe).hexdigest()[:12]}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            staging = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            build(staging)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
    return target


@pytest.fixture(scope="session")
def trained_model() -> Path:
    """Tiny checkpoint that answers tiny_checkpoint.TRAINED_OCR / TRAINED_MD for any image."""
    return _cached_checkpoint("trained", tiny_checkpoint.build_trained_checkpoint)


@pytest.fixture(scope="session")
def random_model() -> Path:
    """Tiny checkpoint with random weights."""
    return _cached_checkpoint("random", tiny_checkpoint.build_random_checkpoint)


_forked: ForkedCommand | None = None


def run_cli(*args: str, stdin: bytes | None = None, cwd: Path | None = None, env: dict | None = None,
            fresh: bool = False):  # fmt: skip
    """Run the installed `kosmos25` command; returns the CompletedProcess (text output).
    `env` adds to (a value of None: removes from) the environment. The command is forked
    from a process that has imported torch (`forked_cli`) unless `env` changes what is read
    at start-up, `fresh` asks for the real start (to see start-up itself), or the variable
    KOSMOS25_TESTS_FRESH=1 asks it for every call (to rule the fork out)."""
    global _forked
    base_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base_env.pop("KOSMOS25_MODEL", None)
    full_env = {**base_env, **(env or {})}
    full_env = {key: value for key, value in full_env.items() if value is not None}  # None: unset it
    if _forked is None:
        _forked = ForkedCommand(base_env)
    if fresh or os.environ.get("KOSMOS25_TESTS_FRESH") == "1" or not _forked.can_run(full_env):
        result = subprocess.run([str(KOSMOS25), *args], input=stdin, capture_output=True, cwd=cwd, env=full_env,
                                timeout=300)  # fmt: skip
    else:
        result = _forked.run([str(KOSMOS25), *args], full_env, stdin, cwd, timeout=300)
    result.stdout = result.stdout.decode("utf-8")
    result.stderr = result.stderr.decode("utf-8")
    return result


def pytest_unconfigure(config) -> None:
    if _forked is not None:
        _forked.close()


@pytest.fixture(scope="session")
def ray_address() -> str:
    """One local Ray instance for every Ray test; the CLI joins it through RAY_ADDRESS."""
    # Loopback only on this machine: with this set, every Ray address is 127.0.0.1.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
