"""Joining or starting Ray for `--ray`: what the option takes (`RayOptions`, the address
forms), and connecting with one-line errors instead of Ray's minutes of retries.

Ray is imported only by `connect`, when `--ray` is given.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelUnavailable


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray.

    `address`: "" for `ray.init()`'s own choice ($RAY_ADDRESS, else a new local
    instance), "auto" for the cluster started on this machine, "HOST:PORT" or
    "ray://HOST:PORT" for a given one. `workers`: None for one per GPU, or a few
    that fit the CPUs. `pages_per_task`: the page range a long PDF is split into.
    """

    address: str = ""
    workers: int | None = None
    gpus_per_worker: float = 1.0
    verbose: bool = False
    pages_per_task: int = 32
    max_attempts: int = 3


def is_ray_address(text: str) -> bool:
    """True for what `--ray` takes as an address: auto, local, HOST:PORT, ray://..."""
    if text in ("auto", "local") or text.startswith("ray://"):
        return True
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and "/" not in host


def optional_ray_value(args: list[str]) -> list[str]:
    """`--ray` takes an optional value: a bare `--ray` (last, before an option, or
    before a path) becomes `--ray=`, so `kosmos25 ocr --ray scans/` reads scans/."""
    out = []
    for index, arg in enumerate(args):
        following = args[index + 1] if index + 1 < len(args) else None
        if arg == "--ray" and (following is None or not is_ray_address(following)):
            arg = "--ray="
        out.append(arg)
        if arg == "--":
            out.extend(args[index + 1 :])
            break
    return out


def connect(options: RayOptions):
    """Import Ray and join or start a cluster; Ray's own logs stay off unless verbose."""
    joining = options.address not in ("", "local") or (options.address == "" and os.environ.get("RAY_ADDRESS"))
    if joining and "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
        # `ray start --head` turns token auth on once a token exists, but a client sends
        # the token only in token mode, which Ray reads when it is imported.
        os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report (nor its notice) unless asked for
    try:
        import ray
    except ImportError:
        raise ModelUnavailable(
            "--ray needs Ray, which is not installed: pip install 'kosmos25[ray]' (or 'make install')"
        ) from None
    level = logging.INFO if options.verbose else logging.ERROR
    address = None if options.address == "" else options.address
    check_reachable(address if address is not None else os.environ.get("RAY_ADDRESS", ""))
    kwargs = {"include_dashboard": False} if address in (None, "local") else {}
    try:
        ray.init(address=address, logging_level=level, log_to_driver=options.verbose, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = options.address or os.environ.get("RAY_ADDRESS") or "a new local instance"
        raise ModelUnavailable(f"--ray: cannot start or join Ray at {where}: {str(exc).splitlines()[0]}") from None
    return ray


def check_reachable(address: str) -> None:
    """Fail in seconds, with one line, when a HOST:PORT address does not answer: Ray itself
    retries for minutes, printing its own log lines."""
    hostport = address.removeprefix("ray://")
    if not is_ray_address(hostport) or hostport in ("auto", "local"):
        return
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ModelUnavailable(f"--ray: no Ray cluster answers at {address} ({exc.strerror or exc})") from None
