"""Settings of one ``vace serve`` process, gathered in one place so the CLI, the app factory and tests agree."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

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
    """Accepted ``Authorization: Key ...`` values; empty means auth is off."""
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
