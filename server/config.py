"""The settings of one ``vace`` process: one pydantic-settings model that the CLI and the app both read.

Every field can come from three places, strongest first: a keyword argument (the CLI passes the flags it was given;
tests pass what they set), the environment variable ``VACE_<FIELD>`` (``VACE_API_KEYS=k1,k2``,
``VACE_LIMITS=max_video_seconds=120,max_ref_images=4``: lists are comma-separated), and the default here. Each field
is also the flag ``--<field>`` (``server/cli.py`` makes them from these classes: the docstring under a field is its
help), so a setting has one name, its default and its meaning are written once, and ``vace serve --help`` and the
README table describe these classes. Durations are in seconds and end in ``_s``.

The fields come in layers, each class one more kind of process: :class:`~pipelines.runtime.RuntimeSettings` (how
models sit on a device), :class:`JobSettings` (any command that runs jobs: ``vace generate`` and ``preprocess``
too), :class:`NodeSettings` (a node of a server: ``vace worker``) and :class:`Settings` (the HTTP node:
``vace serve``, every field).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from pipelines.limits import Limits
from pipelines.lora_cache import LoraCache
from pipelines.runtime import RuntimeConfig, RuntimeSettings
from pipelines.windows import DEFAULT_FRAMES, DEFAULT_OVERLAP, WindowSettings

log = logging.getLogger(__name__)

CACHE = Path.home() / ".cache" / "vace"
MAX_PRESIGNED_TTL_S = 7 * 24 * 3600
"""SigV4 presigned URLs are valid for at most seven days; stores refuse a longer ``X-Amz-Expires`` only when the URL
is used, so a longer ``--files-url-ttl-s`` is refused here, at startup."""
RENAMED: dict[str, tuple[str, int]] = {
    "lease_seconds": ("lease_s", 1),
    "files_url_ttl": ("files_url_ttl_s", 1),
    "expander_timeout": ("expander_timeout_s", 1),
    "timeout_keep_alive": ("keep_alive_timeout_s", 1),
    "retention_hours": ("retention_s", 3600),
    "lora_cache_url_hours": ("lora_cache_url_s", 3600),
}
"""Settings renamed when every duration became seconds with ``_s``: old name -> (new name, seconds per old unit).
Operators' scripts and deployments name the old ones, so ``VACE_<OLD>`` and ``--<old>`` are still read, converted,
as the new setting, each time with a warning that names the new one."""


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _items(value: Any) -> Any:
    """A comma-separated string (the environment's form) or any iterable of strings, as stripped non-empty items."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, (list, tuple, set, frozenset)):
        return [item.strip() for item in value if isinstance(item, str) and item.strip()]
    return value


def _limits(value: Any) -> Any:
    """``NAME=VALUE`` settings (a comma-separated string or a list) applied to the default limits."""
    if isinstance(value, (str, list, tuple)):
        return Limits().with_settings(_items(value))
    return value


def _text(value: Any) -> Any:
    """A path given as a ``Path`` (tests, the CLI) as the string the field keeps."""
    return str(value) if isinstance(value, Path) else value


def renamed_value(old: str, value: Any) -> tuple[str, Any]:
    """A value given under a setting's old name (see :data:`RENAMED`) as (new name, value in the new unit), with
    the warning that tells the operator the new name."""
    new, factor = RENAMED[old]
    log.warning(
        "%s (VACE_%s) is renamed %s (VACE_%s)%s; the old name still works for now",
        f"--{old.replace('_', '-')}",
        old.upper(),
        f"--{new.replace('_', '-')}",
        new.upper(),
        f", in seconds: {old} x {factor}" if factor != 1 else "",
    )
    return new, float(value) * factor if factor != 1 else value


Items = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_items)]
Keys = Annotated[frozenset[str], NoDecode, BeforeValidator(_items)]


class JobSettings(RuntimeSettings):
    """Where jobs find weights and keep LoRA downloads: every command that runs a job."""

    weights_dir: Path = CACHE / "weights"
    """The weights directory (layout: weights/LAYOUT.md)."""
    data_dir: Path = CACHE / "server"
    """This process's own data: the SQLite job store, files and uploads, the certificate, the node secret and
    webhook signing key, the LoRA cache; one server per data directory (its worker processes share it)."""
    lora_cache_dir: Path | None = None
    """Where downloaded LoRA files are kept between jobs, by content hash (default: <data-dir>/lora-cache)."""
    lora_cache_gb: float = 50.0
    """Size in GB past which the least recently used cached LoRA files are deleted."""
    lora_cache_url_s: float = 3600.0
    """Seconds a LoRA URL's download is reused before the URL is fetched again (0: every job)."""
    window_frames: int = DEFAULT_FRAMES
    """Frames one pass of the model generates: a longer job (match_input_num_frames on a long video) runs as
    consecutive windows of this many (4k+1, 17..241; pipelines/windows.py)."""
    window_overlap: int = DEFAULT_OVERLAP
    """Frames of the output each later window continues from, kept as they are (4k+1, fewer than window_frames)."""

    @model_validator(mode="after")
    def _check_windows(self) -> JobSettings:
        self.windows  # noqa: B018 - WindowSettings refuses lengths the model cannot run now, not at the first long job
        return self

    @property
    def windows(self) -> WindowSettings:
        """How jobs longer than one pass are cut into windows."""
        return WindowSettings(frames=self.window_frames, overlap=self.window_overlap)

    @property
    def runtime(self) -> RuntimeConfig:
        """How every model manager of this process places its models: these settings' runtime part."""
        return RuntimeConfig.model_validate(self, from_attributes=True)

    def lora_cache(self) -> LoraCache:
        """The LoRA download cache of this process's jobs."""
        return LoraCache(
            self.lora_cache_dir or self.data_dir / "lora-cache",
            int(self.lora_cache_gb * 1024**3),
            self.lora_cache_url_s,
        )


class NodeSettings(JobSettings):
    """A node of a server, with HTTP or without (vace worker): its store, files, workers and what its jobs may do."""

    store: str | None = None
    """The job store: sqlite:///ABS/PATH (default: the data directory's jobs.sqlite3) or
    postgresql://user:pass@host:port/db, shared by any number of API and worker processes."""
    files: Annotated[str | None, BeforeValidator(_text)] = None
    """Where files live: a directory holding files/ (served) and uploads/ (in progress); default: the data
    directory. Several nodes share one by mounting it (NFS, a shared volume) or by naming one s3://bucket/prefix
    (connection from the standard AWS variables boto3 reads: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)."""
    files_url_ttl_s: int = Field(MAX_PRESIGNED_TTL_S, ge=1, le=MAX_PRESIGNED_TTL_S)
    """S3 files: seconds a presigned output URL stays valid (SigV4 allows at most 604800, seven days; never
    longer than the credentials that signed it)."""
    files_public_url: str | None = None
    """S3 files: a public base URL that serves the bucket's objects (a CDN, a public bucket); output URLs are then
    this URL + / + the object key (the prefix included) instead of presigned URLs."""
    max_upload_bytes: int = 2 * 1024**3
    """Largest file one upload may hold."""
    models: Items = ()
    """The models this node's workers take jobs for (default: every model whose weights are present)."""
    devices: Items = ()
    """One worker per device, e.g. cuda:0 cuda:1 (default: every CUDA device, or the CPU when there is none)."""
    parallel: str | None = None
    """With devices: they form one job group that serves one job at a time, split as this spec (cfg=2,
    ulysses=N, ring=N or a combination such as cfg=2,ulysses=4; the product equals the number of devices)."""
    max_models: int = 2
    """Models kept loaded per device (the least recently used is evicted)."""
    worker_threads: bool = False
    """Run the workers as threads of the node's process instead of one process each (per device, or per job
    group): for tests that reach into a worker, and debuggers. Processes keep decoding, denoising and encoding off
    the HTTP process's interpreter lock, and a worker that crashes takes only itself down."""
    lease_s: float = 30.0
    """Seconds a running job may go without a sign of life from its worker before another node takes it back."""
    switch_after_s: float = 300.0
    """Seconds a queued job may be passed over for jobs a worker is better placed for (its loaded model, a runner
    hint it saw lately) before it goes first regardless: the bound on that preference; 0: plain FIFO."""
    max_attempts: int = 2
    """Runs a job gets before a crash of the server during it counts as its failure."""
    limits: Annotated[Limits, NoDecode, BeforeValidator(_limits)] = Limits()
    """Input limits as NAME=VALUE (download size and time, video length and size, image size, data URIs, prompt,
    references, LoRAs); the ones given replace their defaults."""
    fetch_allow: Items = ()
    """Non-public sources media and LoRAs may be downloaded from: CIDRs, hosts, host:port (10.0.0.0/8,
    media.internal, 127.0.0.1:9000); all else must resolve to public addresses, checked on every redirect. Webhook
    targets are not covered: see webhook-allow."""
    webhook_allow: Items = ()
    """Non-public webhook targets (same forms), checked at submission and at every attempt by the node making it:
    give every node of a fleet the same list."""
    checkpoint_every_steps: int = Field(5, ge=0)
    """A running job writes a checkpoint of its denoising loop (to the file store) after this many steps since its
    last one; a job handed back (its worker died or stopped) goes on from its newest checkpoint. 0: by time only."""
    checkpoint_every_s: float = Field(300.0, ge=0)
    """Or a checkpoint after the first step that ends this many seconds after the last one. 0: by steps only; both
    0: no checkpoints."""
    preview_every_steps: int = Field(1, ge=0)
    """A running job publishes a live preview of what it is denoising after every this many steps. 0: none."""
    retention_s: float = 7 * 24 * 3600.0
    """Age in seconds past which served files, abandoned uploads and finished jobs are deleted (default: a week);
    0 keeps everything."""
    retention_sweep_s: float = 600.0
    """Seconds between two retention sweeps."""

    @model_validator(mode="after")
    def _check_parallel(self) -> NodeSettings:
        """A group that cannot form is refused at start, not when its worker first starts it."""
        if self.parallel is None:
            return self
        from pipelines.parallel import ParallelSpec

        if not self.devices:
            raise ValueError("--parallel needs --devices, one per rank of the group (e.g. cuda:0 cuda:1)")
        spec = ParallelSpec.parse(self.parallel)
        spec.check_devices(len(self.devices))
        kinds = {device.split(":")[0] for device in self.devices}
        if len(kinds) > 1:
            raise ValueError(f"--devices {' '.join(self.devices)}: a group's devices are all of one kind")
        spec.check_device_type(kinds.pop())
        return self

    @property
    def store_url(self) -> str:
        """``--store``, or the data directory's SQLite file."""
        return self.store or f"sqlite:///{self.jobs_db}"

    @property
    def shared_store(self) -> bool:
        """Whether the store is one that many nodes share (PostgreSQL): this process is a node of a fleet. The one
        place that question is asked: a fleet's nodes share secrets they are given (``server/api/node_secrets.py``),
        only expired leases say a job is orphaned (never ``JobStore.recover``), and the store's announcements reach
        every process by themselves. A store of one node (SQLite) is not shared, even by the node's worker
        processes: the node owns it, recovers its jobs at start and relays its worker processes'
        announcements."""
        return self.store_url.startswith(("postgresql://", "postgres://"))

    @property
    def jobs_db(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def files_bucket(self) -> str | None:
        """The ``s3://bucket/prefix`` files live in, or None for a directory."""
        return self.files if self.files and self.files.startswith("s3://") else None

    @property
    def files_dir(self) -> Path:
        return Path(self.files or self.data_dir) / "files"

    @property
    def uploads_dir(self) -> Path:
        return Path(self.files or self.data_dir) / "uploads"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"


class _RenamedEnv(PydanticBaseSettingsSource):
    """``VACE_<OLD>`` variables of renamed settings (:data:`RENAMED`), read after the current names."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the variables by their old names

    def __call__(self) -> dict[str, Any]:
        environ = {name.upper(): value for name, value in os.environ.items()}
        return dict(
            renamed_value(old, environ[f"VACE_{old.upper()}"]) for old in RENAMED if f"VACE_{old.upper()}" in environ
        )


class Settings(BaseSettings, NodeSettings):
    """The HTTP node (vace serve): what it answers, to whom, and how long it waits.

    This class holds every setting (its own and its layers'); a ``vace`` process builds it whatever its command.
    Paths are created on start."""

    model_config = SettingsConfigDict(env_prefix="VACE_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    """Address to bind (loopback only by default); anything but loopback needs an API key or --insecure-no-auth."""
    port: int = 8000
    """The port to listen on."""
    tls: bool = False
    """https with a self-signed certificate made on first start (<data-dir>/tls/, needs the openssl command)."""
    public_url: str | None = None
    """Base URL used in every URL the server hands out (behind a proxy); default: the URL each request came in on."""
    api_keys: Keys = frozenset()
    """Accepted 'Authorization: Key ...' values; none (and no admin keys) means auth is off. Prefer the environment
    variable or api-keys-file: a flag shows in ps."""
    api_keys_file: Path | None = None
    """A file with one more key per line (# comments)."""
    admin_keys: Keys = frozenset()
    """API keys that also see, read and cancel every key's jobs (and see the fleet's workers in /ready)."""
    secrets_dir: Path | None = None
    """Where an HTTP node keeps its node secret and webhook signing key (secret, webhook-ed25519.pem); default: the
    data directory. A server with a store of its own makes them on first start; a fleet's API nodes are given the
    same ones, made once with vace secrets DIR."""
    allowed_hosts: Items = ()
    """Host names to answer besides loopback names, the bound address and public-url's host; '*' answers any.
    Without API keys other hosts are refused (DNS rebinding); with keys any host is answered unless this is
    given."""
    cors_origins: Items = ()
    """Browser origins allowed to call the API directly (CORS), e.g. https://app.example.com; none by default. '*'
    allows any origin, never with credentials (the API key is a header, not a cookie)."""
    no_workers: bool = False
    """An API node: HTTP only, no workers, no model loading (workers elsewhere pull from the shared store)."""
    limit_concurrency: int = 512
    """Open connections plus running requests past which new requests get a 503 (uvicorn's limit)."""
    keep_alive_timeout_s: int = Field(5, gt=0)
    """Seconds an idle keep-alive connection stays open."""
    header_timeout_s: float = Field(10.0, gt=0)
    """Seconds a connection may take to send a request's line and headers (from its opening or the end of the
    previous response) before it is closed."""
    read_timeout_s: float = Field(30.0, gt=0)
    """Seconds a client may go without sending a byte while the server waits for its request (headers, body), or
    without taking a byte of a response the server is sending, before its connection is closed."""
    unread_body_timeout_s: float = Field(30.0, gt=0)
    """Seconds the server keeps reading (and dropping) the rest of a body it answered without reading (a refused,
    unauthenticated request) before it closes the connection."""
    max_body_bytes: int = 16 * 1024**2
    """Largest JSON request body (data URIs included); uploads go through /storage and have their own limit."""
    webhook_attempts: int = 11
    """Delivery attempts per webhook: fal's first try and 10 retries."""
    webhook_backoff_s: float = 7.0
    """Seconds before the first retry, doubling after each (7 s ... 3584 s: about two hours in all, as fal)."""
    webhook_timeout_s: float = 15.0
    """Seconds one attempt may take in all: DNS lookup, connect, send, the answer's status."""
    webhook_concurrency: int = Field(16, ge=1)
    """Attempts one node has in flight at once; more wait their turn."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' sources, with the old names of renamed settings after the environment's."""
        return init_settings, env_settings, _RenamedEnv(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _keys_from_file(cls, data: Any) -> Any:
        """Add the keys of ``api_keys_file`` to ``api_keys``."""
        if isinstance(data, dict) and data.get("api_keys_file"):
            lines = Path(data["api_keys_file"]).read_text().splitlines()
            data = {
                **data,
                "api_keys": [*_items(data.get("api_keys", [])), *_items([line.split("#", 1)[0] for line in lines])],
            }
        return data

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

    def accepted_hosts(self) -> frozenset[str] | None:
        """The ``Host`` names served, or None for any.

        Without keys, a page elsewhere that rebinds its DNS name to this machine could drive the server, so only
        loopback names, the bound address (this machine's names when bound to all interfaces), the public URL's
        host and ``--allowed-hosts`` names are served. With keys such a page gets nowhere (it has no key), and
        the names clients use behind Docker or a proxy are not known in advance, so any host is served unless
        ``--allowed-hosts`` is given.
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
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"
