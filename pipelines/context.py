"""``JobContext``: what a job may take from the world, given by whoever runs it and passed down explicitly.

The server builds one from its config (its limits, its allow-lists, its own file store, remote refs only);
the CLI uses the defaults (local paths welcome). Nothing here is process-wide, so two servers in one process, or a
server and a CLI run, each keep their own rules.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .limits import Limits
from .lora_cache import LoraCache
from .windows import WindowSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_allow_entry(entry: str) -> tuple[str, int | None]:
    """``(host or CIDR, port or None)`` of one allow-list entry: ``10.0.0.0/8``, ``192.168.1.5``,
    ``media.internal``, ``127.0.0.1:8080``, ``[::1]:8080``."""
    entry = entry.strip()
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", entry)
    if m:
        return m.group(1).lower(), int(m.group(2)) if m.group(2) else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if not port.isdigit():
            raise ValueError(f"bad fetch allow-list entry {entry!r}")
        return host.lower(), int(port)
    return entry.lower(), None


@dataclass(frozen=True)
class JobContext:
    """The rules one job runs under besides its request: input limits, where its media may come from and where its
    webhook may go."""

    limits: Limits = Limits()
    fetch_allow: tuple[str, ...] = ()
    """Non-public sources media may be downloaded from (see :func:`parse_allow_entry`); all else must be public."""
    webhook_allow: tuple[str, ...] = ()
    """Non-public webhook targets (same forms). A list of its own: a media server on the private network is no
    reason to let callers make this server POST to it."""
    local_files: Callable[[str, Path, int], Path | None] | None = None
    """Maps a ref, the job's work directory and the most bytes the job takes to a file on this machine holding the
    ref's bytes (the server's own files: read in place from a directory store, copied into the work directory from a
    bucket), or None for refs it does not own: those are read from the store instead of downloaded from ourselves.
    Raises :class:`~pipelines.errors.FileTooLarge` for a file over the limit, before copying any of it."""
    local_paths: bool = True
    """Whether local paths and ``file://`` URLs are inputs (the CLI) or refused (a server's remote callers)."""
    lora_cache: LoraCache | None = None
    """Where downloaded LoRA files are kept between jobs; None downloads a LoRA URL anew for each job."""
    windows: WindowSettings = WindowSettings()
    """How a job longer than one pass of the model is cut into windows (``pipelines.windows``)."""

    def __post_init__(self) -> None:
        for entry in (*self.fetch_allow, *self.webhook_allow):
            parse_allow_entry(entry)  # a typo fails here, at startup, not at the first fetch


def allows(allow: tuple[str, ...], host: str, ip: IPAddress, port: int) -> bool:
    """Whether the allow-list ``allow`` permits connecting to ``ip`` (found for ``host``) on ``port``."""
    for entry in allow:
        what, want_port = parse_allow_entry(entry)
        if want_port is not None and want_port != port:
            continue
        if what == host:
            return True
        try:
            if ip in ipaddress.ip_network(what, strict=False):
                return True
        except ValueError:
            continue
    return False
