"""What every process of a node opens alike, the node's own and its worker processes: the job store, the file store
and the rules for its jobs (and how often they checkpoint and preview), from the settings.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipelines.context import JobContext

from .config import Settings
from .files.store import FileStore, LocalFileStore
from .store.jobs import JobStore, SqliteJobStore


def resolve_devices(names: tuple[str, ...]) -> list[torch.device]:
    """The devices to run workers on: as configured, else every CUDA device, else the CPU."""
    if names:
        return [torch.device(n) for n in names]
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


def open_store(config: Settings, *, owner: bool = True) -> JobStore:
    """The job store ``--store`` names: ``sqlite:///ABS/PATH`` (default: the data directory's ``jobs.sqlite3``)
    or ``postgresql://user:pass@host:port/db``, which many API and worker processes share. ``owner``: this is the
    node's own process, not one of its worker processes (which a SQLite file admits only as members)."""
    url = config.store_url
    if url.startswith("sqlite:///"):
        return SqliteJobStore(Path(url.removeprefix("sqlite://")), owner=owner)
    if config.shared_store:
        from .store.postgres import PostgresJobStore

        return PostgresJobStore(url)
    raise ValueError(f"--store must be sqlite:///ABS/PATH or postgresql://..., got {url.split('://')[0]}://...")


def open_files(config: Settings) -> FileStore:
    """The file store ``--files`` names: a directory (default: the data directory) or ``s3://bucket/prefix``, which
    many API and worker nodes share (its connection comes from the standard AWS variables)."""
    if config.files_bucket:
        from .files.s3 import S3FileStore

        return S3FileStore(
            config.files_bucket,
            max_bytes=config.max_upload_bytes,
            spool_dir=config.data_dir / "spool",
            url_ttl_s=config.files_url_ttl_s,
            public_url=config.files_public_url,
        )
    return LocalFileStore(config.files_dir, config.uploads_dir, config.max_upload_bytes)


def job_context(config: Settings, files: FileStore) -> JobContext:
    """This node's rules for its jobs: its limits and allow-lists, its own files read from the store, no local paths
    from remote callers, its LoRA download cache and its windows for long jobs."""
    return JobContext(
        limits=config.limits,
        fetch_allow=config.fetch_allow,
        webhook_allow=config.webhook_allow,
        local_files=files.fetch,
        local_paths=False,
        lora_cache=config.lora_cache(),
        windows=config.windows,
    )
