"""Settings of one ``vace serve`` process, gathered in one place so the CLI, the app factory and tests agree."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipelines.limits import Limits
from pipelines.runtime import RuntimeConfig

DEFAULT_DATA_DIR = Path(os.environ.get("VACE_DATA_DIR", Path.home() / ".cache" / "vace" / "server"))


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs to start; paths are created on start."""

    weights_dir: Path
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    port: int = 8000
    tls: bool = False
    public_url: str | None = None
    """Base URL used in every URL we hand out (behind a proxy); default: the URL each request came in on."""
    api_keys: frozenset[str] = frozenset()
    """Accepted ``Authorization: Key ...`` values; empty (and no admin keys) means auth is off."""
    admin_keys: frozenset[str] = frozenset()
    """API keys that also see and cancel every key's jobs."""
    allowed_hosts: tuple[str, ...] = ()
    """``Host`` names to answer besides the defaults (see :meth:`accepted_hosts`); ``*`` answers any."""
    limit_concurrency: int = 512
    """Open connections plus running requests past which new requests get a 503 (uvicorn's limit)."""
    timeout_keep_alive_s: int = 5
    """Seconds an idle keep-alive connection stays open."""
    header_timeout_s: float = 10.0
    """Seconds a connection may take to send a request's line and headers before it is closed."""
    devices: tuple[str, ...] = ()
    """One worker per device; empty means every CUDA device, or the CPU when there is none."""
    max_models: int = 2
    runtime: RuntimeConfig = RuntimeConfig()
    """Memory mode, attention backend, compilation and default annotators of every worker's models."""
    max_upload_bytes: int = 2 * 1024**3
    max_attempts: int = 2
    """Runs a job gets before a crash of the server during it counts as its failure."""
    webhook_attempts: int = 5
    webhook_backoff_s: float = 1.0
    webhook_timeout_s: float = 15.0
    limits: Limits = Limits()
    """Input limits (download size/time, video length/size, image size, data URIs, prompt, references)."""
    fetch_allow: tuple[str, ...] = ()
    """Non-public sources media may be downloaded from: CIDRs, hosts, ``host:port``; all else must be public."""
    max_body_bytes: int = 16 * 1024**2
    """Largest JSON request body (data URIs included); uploads go through /storage and have their own limit."""
    retention_s: float = 7 * 24 * 3600.0
    """Age past which served files, abandoned uploads and finished jobs are deleted; 0 keeps everything."""
    retention_sweep_s: float = 600.0
    """Seconds between two retention sweeps."""

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

    def accepted_hosts(self) -> frozenset[str] | None:
        """The ``Host`` names served, or None for any.

        Without keys, a page elsewhere that rebinds its DNS name to this machine could drive the server, so only
        loopback names, the bound address (this machine's names when bound to all interfaces), the public URL's
        host and ``--allowed-host`` names are served. With keys such a page gets nowhere (it has no key), and
        the names clients use behind Docker or a proxy are not known in advance, so any host is served unless
        ``--allowed-host`` is given.
        """
        if "*" in self.allowed_hosts or (self.auth_enabled and not self.allowed_hosts):
            return None
        names = {"localhost", "127.0.0.1", "::1", *self.allowed_hosts}
        if self.host in ("0.0.0.0", "::", ""):
            names |= {socket.gethostname(), socket.getfqdn()}
        else:
            names.add(self.host)
        if self.public_url and urlsplit(self.public_url).hostname:
            names.add(urlsplit(self.public_url).hostname or "")
        return frozenset(names)

    @property
    def jobs_db(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"
