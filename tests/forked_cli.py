"""The `kosmos25` command for tests, started by forking a process that has already
imported torch and transformers.

Starting the real command spends 3-7 s importing them on these 2-core machines, most of
what a tiny model's run costs; there are some 60 such runs in the suite. A fork costs
milliseconds. The child is still a process of its own: its own arguments, environment,
working directory, stdin, stdout, stderr and exit code, running the console script's
function (`kosmos_cli.cli:run`) and ending as Python does (threads joined, exit handlers).

What a fork cannot show is what happens while Python starts and imports: warnings raised
at import, and variables read at import (PYTHONPATH, PYTHONWARNINGS, HF_HOME, ...). So
`conftest.run_cli` forks only when the environment differs from the forking process's
in `RUNTIME_ENV`, variables read while the command runs, and starts the real command
otherwise (or when a test asks for it).

Run as a script, this is the forking process: one JSON request per line on stdin, answered
on stdout with the child's pid, then its exit code.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

# What a run imports lazily (the CLI imports no torch itself), imported once here.
_PRELOADED = ("torch", "transformers", "transformers.models.kosmos2_5.modeling_kosmos2_5",
              "transformers.models.kosmos2_5.processing_kosmos2_5", "transformers.models.auto.processing_auto",
              "pydantic", "kosmos_cli.api", "kosmos_cli.run.app", "kosmos_cli.model.decode_loop")  # fmt: skip

# Read by the command while it runs, not at import (or by nothing in it: pytest's name of
# the current test): a difference here can be forked.
RUNTIME_ENV = frozenset({"PATH", "COLUMNS", "LINES", "TERM", "NO_COLOR", "KOSMOS25_MODEL", "PYTEST_CURRENT_TEST"})


class ForkedCommand:
    """One forking process (started on first use), running commands one at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process: subprocess.Popen | None = None
        self.env = dict(env)  # the forking process's; a child's may differ in RUNTIME_ENV
        self.folder = Path(tempfile.mkdtemp(prefix="kosmos25-forked-"))

    def can_run(self, env: dict[str, str]) -> bool:
        """Whether a command with `env` behaves forked as it would started afresh."""
        if not sys.platform.startswith("linux"):  # macOS: forking after framework imports is unsafe
            return False
        changed = {key for key in self.env.keys() | env.keys() if self.env.get(key) != env.get(key)}
        return changed <= RUNTIME_ENV

    def run(self, argv: list[str], env: dict[str, str], stdin: bytes | None, cwd: Path | None, timeout: float):
        """Run `argv` (the command's path first) as subprocess.run(capture_output=True) would."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        stdin_path = None
        if stdin is not None:
            stdin_path = self.folder / "stdin"
            stdin_path.write_bytes(stdin)
        out, err = self.folder / "stdout", self.folder / "stderr"
        request = {"argv": argv, "env": env, "cwd": str(cwd or os.getcwd()), "stdin": stdin_path and str(stdin_path),
                   "stdout": str(out), "stderr": str(err)}  # fmt: skip
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        pid = json.loads(self._answer(timeout))["pid"]
        try:
            returncode = json.loads(self._answer(timeout))["returncode"]
        except subprocess.TimeoutExpired:
            os.kill(pid, 9)
            self._answer(timeout)
            raise
        return subprocess.CompletedProcess(argv, returncode, out.read_bytes(), err.read_bytes())

    def _answer(self, timeout: float) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise subprocess.TimeoutExpired(["kosmos25 (forked)"], timeout)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the forking process ended (exit code {self.process.wait()})")
        return line

    def _start(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=self.env, text=True)  # fmt: skip

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)


def _serve() -> None:
    """The forking process: import what a run imports, then fork a child per request."""
    # The protocol moves to fds of its own, so that the standard streams a child inherits
    # were never read from or written to (no read-ahead of requests in sys.stdin's buffer).
    requests, answers = os.fdopen(os.dup(0), "r"), os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    for name in _PRELOADED:
        importlib.import_module(name)
    from kosmos_cli.cli import run

    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            requests.close()  # the protocol is the forking process's, not the child's
            answers.close()
            _child(request, run)  # never returns
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


def _child(request: dict, run) -> None:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stdin = os.open(request["stdin"] or os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.argv = request["argv"]
    # As the console script: its exit code, then Python's own shutdown.
    sys.exit(run())


if __name__ == "__main__":
    _serve()
