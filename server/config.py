"""The settings of one ``vace`` process: one pydantic-settings model that the CLI and the app both read.

Every field can come from three places, strongest first: a keyword argument (the CLI passes the flags it was given;
tests pass what they set), the environment variable ``VACE_<FIELD>`` (``VACE_API_KEYS=k1,k2``,
``VACE_LIMITS=max_video_seconds=120,max_ref_images=4``: lists are comma-separated), and the default here. So a
default or an environment name is written down once, and ``vace serve --help`` and the README table describe this
class.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipelines.limits import Limits
from pipelines.lora_cache import LoraCache
from pipelines.manifest import DEFAULT_ANNOTATORS, DEFAULT_MASK_TRACKER
from pipelines.runtime import DEFAULT_MASK_EXPAND_RATIO, RuntimeConfig

CACHE = Path.home() / ".cache" / "vace"
MAX_PRESIGNED_TTL_S = 7 * 24 * 3600
"""SigV4 presigned URLs are valid for at most seven days; stores refuse a longer ``X-Amz-Expires`` only when the URL
is used, so a longer ``--files-url-ttl`` is refused here, at startup."""


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


Items = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_items)]
Keys = Annotated[frozenset[str], NoDecode, BeforeValidator(_items)]


class Settings(BaseSettings):
    """Everything a ``vace`` process needs to start; paths are created on start."""

    model_config = SettingsConfigDict(env_prefix="VACE_", frozen=True, extra="forbid")

    weights_dir: Path = CACHE / "weights"
    data_dir: Path = CACHE / "server"
    """Job store, files, uploads, the certificate and the signing secret; one server process per directory."""
    host: str = "127.0.0.1"
    port: int = 8000
    tls: bool = False
    public_url: str | None = None
    """Base URL used in every URL we hand out (behind a proxy); default: the URL each request came in on."""

    api_keys: Keys = frozenset()
    """Accepted ``Authorization: Key ...`` values; empty (and no admin keys) means auth is off."""
    api_keys_file: Path | None = None
    """A file with one more key per line (``#`` comments)."""
    admin_keys: Keys = frozenset()
    """API keys that also see and cancel every key's jobs (and the fleet's workers in ``/ready``)."""
    secrets_dir: Path | None = None
    """Where an HTTP node keeps its node secret and webhook signing key (``secret``, ``webhook-ed25519.pem``);
    default: the data directory. A server with a store of its own makes them on first start; a fleet's API nodes
    are given the same ones, made once with ``vace secrets DIR`` (``server/node_secrets.py``)."""
    allowed_hosts: Items = ()
    """``Host`` names to answer besides the defaults (see :meth:`accepted_hosts`); ``*`` answers any."""
    cors_origins: Items = ()
    """Browser origins allowed to call the API directly (CORS); none by default. ``*`` allows any origin, never
    with credentials (the API key is a header, not a cookie)."""
    limit_concurrency: int = 512
    """Open connections plus running requests past which new requests get a 503 (uvicorn's limit)."""
    timeout_keep_alive: int = 5
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

    store: str | None = None
    """The job store: ``sqlite:///ABS/PATH`` (default: the data directory's ``jobs.sqlite3``) or
    ``postgresql://user:pass@host:port/db``, shared by any number of API and worker processes."""
    files: Annotated[str | None, BeforeValidator(_text)] = None
    """Where files live: a directory holding ``files/`` (served) and ``uploads/`` (in progress); default: the data
    directory. Several nodes share one by mounting it (NFS, a shared volume) or by naming one ``s3://bucket/prefix``
    (connection from the standard AWS variables boto3 reads: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...)."""
    files_url_ttl: int = Field(MAX_PRESIGNED_TTL_S, ge=1, le=MAX_PRESIGNED_TTL_S)
    """S3 files: seconds a presigned output URL stays valid (SigV4 allows at most seven days)."""
    files_public_url: str | None = None
    """S3 files: a public base URL that serves the bucket's objects (a CDN, a public bucket); output URLs are then
    this URL + ``/`` + the object key (the prefix included) instead of presigned URLs."""
    models: Items = ()
    """The models this node's workers take jobs for (default: every model whose weights are present)."""
    no_workers: bool = False
    """An API node: HTTP only, no workers, no model loading (workers elsewhere pull from the shared store)."""
    worker_threads: bool = False
    """Run the workers as threads of the node's process instead of one process each (per device, or per job
    group): for tests that reach into a worker, and debuggers. Processes keep decoding, denoising and encoding off
    the HTTP process's interpreter lock, and a worker that crashes takes only itself down."""
    lease_seconds: float = 30.0
    """How long a job may run without a sign of life from its worker before another node takes it back."""
    switch_after_s: float = 300.0
    """How long a job may be passed over for jobs a worker is better placed for (its loaded model, a runner hint
    it saw lately) before it goes first regardless: the bound on that preference; 0 turns it off."""
    devices: Items = ()
    """One worker per device; empty means every CUDA device, or the CPU when there is none."""
    parallel: str | None = None
    """With ``devices``: they form one job group that serves one job at a time, split as this spec (``cfg=2``,
    ``ulysses=N``, ``ring=N`` or a combination; the product equals the number of devices)."""
    max_models: int = 2
    memory_mode: str = "auto"
    attention: str = "auto"
    compile: bool = False
    lora_max_rank: int = 64
    """With ``compile``: the rank of the LoRA slot compiled transformers carry (0: none, LoRAs refused)."""
    pose_annotator: str = DEFAULT_ANNOTATORS["pose"]
    depth_annotator: str = DEFAULT_ANNOTATORS["depth"]
    safety_threshold: float = 0.5
    prompt_expander: str = "none"
    expander_url: str | None = None
    expander_model: str | None = None
    expander_api_key: str | None = Field(None, repr=False)
    expander_timeout: float = 30.0
    encoder: str = "auto"
    """The H.264 encoder of every worker's outputs: ``auto`` (NVENC on the worker's own GPU where a trial encode
    passes, else libx264), ``libx264``, or ``nvenc`` (a worker where NVENC cannot run refuses to start)."""
    mask_tracking: str = "track"
    """How an inpainting mask image becomes a mask per frame: ``track`` follows it through the clip with SAM2.1
    (``mask_tracker``), ``static`` applies it to every frame as it is."""
    mask_tracker: str = DEFAULT_MASK_TRACKER
    mask_expand_ratio: float = DEFAULT_MASK_EXPAND_RATIO
    """Tracked masks grow on each side by this share of their box (VACE's ``original_expand``); 0 keeps them."""
    mask_threshold: float = 0.5
    """A pixel belongs to the tracked object where SAM2's probability is above this."""

    limits: Annotated[Limits, NoDecode, BeforeValidator(_limits)] = Limits()
    """Input limits (download size/time, video length/size, image size, data URIs, prompt, references)."""
    fetch_allow: Items = ()
    """Non-public sources media (and LoRAs) may be downloaded from: CIDRs, hosts, ``host:port``; all else must be
    public. Webhook targets are not covered: see ``webhook_allow``."""
    webhook_allow: Items = ()
    """Non-public webhook targets (same forms), checked at submission and at every attempt by the node making it:
    give every node of a fleet the same list."""
    max_body_bytes: int = 16 * 1024**2
    """Largest JSON request body (data URIs included); uploads go through /storage and have their own limit."""
    max_upload_bytes: int = 2 * 1024**3
    max_attempts: int = 2
    """Runs a job gets before a crash of the server during it counts as its failure."""
    webhook_attempts: int = 11
    """Delivery attempts per webhook: fal's first try and 10 retries."""
    webhook_backoff_s: float = 7.0
    """Wait before the first retry, doubling after each (7 s ... 3584 s: about two hours in all, as fal)."""
    webhook_timeout_s: float = 15.0
    """One attempt in all: DNS lookup, connect, send, the answer's status."""
    webhook_concurrency: int = Field(16, ge=1)
    """Attempts one node has in flight at once; more wait their turn."""
    checkpoint_every_steps: int = Field(5, ge=0)
    """A running job writes a checkpoint of its denoising loop (to the file store) after this many steps since its
    last one; a job handed back (its worker died or stopped) goes on from its newest checkpoint. 0: by time only."""
    checkpoint_every_s: float = Field(300.0, ge=0)
    """... or after the first step that ends this many seconds after its last one. 0: by steps only; both 0: none."""
    preview_every_steps: int = Field(1, ge=0)
    """A running job publishes a live preview of what it is denoising after every this many steps. 0: none."""
    retention_hours: float = 168.0
    """Age past which served files, abandoned uploads and finished jobs are deleted; 0 keeps everything."""
    retention_sweep_s: float = 600.0
    """Seconds between two retention sweeps."""
    lora_cache_dir: Path | None = None
    """Where downloaded LoRA files are kept between jobs (by content hash); default ``<data_dir>/lora-cache``."""
    lora_cache_gb: float = 50.0
    """Size past which the least recently used cached LoRA files are deleted."""
    lora_cache_url_hours: float = 1.0
    """How long a LoRA URL's download is reused before the URL is fetched again (0: every job)."""

    @model_validator(mode="before")
    @classmethod
    def _keys_from_file(cls, data: Any) -> Any:
        """Add the keys of ``api_keys_file`` to ``api_keys``."""
        if isinstance(data, dict) and data.get("api_keys_file"):
            lines = Path(data["api_keys_file"]).read_text().splitlines()
            data = {**data, "api_keys": [*_items(data.get("api_keys", [])),
                                         *_items([line.split("#", 1)[0] for line in lines])]}
        return data

    @model_validator(mode="after")
    def _check_runtime(self) -> Settings:
        self.runtime  # noqa: B018 - RuntimeConfig refuses bad modes and expander settings now, not at first use
        return self

    @model_validator(mode="after")
    def _check_parallel(self) -> Settings:
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
    def runtime(self) -> RuntimeConfig:
        """Memory mode, attention backend, compilation, default annotators, mask tracking, the optional stages and the
        video encoder of every worker's models."""
        return RuntimeConfig(
            memory_mode=self.memory_mode, attention=self.attention, compile=self.compile,
            lora_max_rank=self.lora_max_rank,
            annotators=(("pose", self.pose_annotator), ("depth", self.depth_annotator)),
            safety_threshold=self.safety_threshold, prompt_expander=self.prompt_expander,
            expander_url=self.expander_url, expander_model=self.expander_model,
            expander_api_key=self.expander_api_key, expander_timeout_s=self.expander_timeout,
            encoder=self.encoder,
            mask_tracking=self.mask_tracking, mask_tracker=self.mask_tracker,
            mask_expand_ratio=self.mask_expand_ratio, mask_threshold=self.mask_threshold,
        )

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
    def store_url(self) -> str:
        """``--store``, or the data directory's SQLite file."""
        return self.store or f"sqlite:///{self.jobs_db}"

    @property
    def shared_store(self) -> bool:
        """Whether the store is one that many nodes share (PostgreSQL): this process is a node of a fleet. The one
        place that question is asked: a fleet's nodes share secrets they are given (``server/node_secrets.py``),
        only expired leases say a job is orphaned (never ``JobStore.recover``), and the store's announcements reach
        every process by themselves. A store of one node (SQLite) is not shared, even by the node's worker
        processes: the node owns it, recovers its jobs at start and relays its worker processes'
        announcements."""
        return self.store_url.startswith(("postgresql://", "postgres://"))

    @property
    def retention_s(self) -> float:
        return self.retention_hours * 3600

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

    def lora_cache(self) -> LoraCache:
        """The LoRA download cache of this process's jobs."""
        return LoraCache(self.lora_cache_dir or self.data_dir / "lora-cache", int(self.lora_cache_gb * 1024**3),
                         self.lora_cache_url_hours * 3600)

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"
