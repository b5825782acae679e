"""Fixtures and helpers shared by the server tests: tiny weights, control videos and live servers on loopback.

Import the fixtures you use into a test module (``from server_fixtures import ...``); pytest puts ``tests/`` on
``sys.path``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from server.api.connections import uvicorn_config
from server.app import create_app
from server.config import Settings
from weights.tiny import build_tiny_weights
from weights.tiny.samples import write_sample

REPO = Path(__file__).resolve().parents[1]
# The smallest job the pipeline takes: 17 frames of the 416x240 sample, 2 steps, no step cache.
SMALL_JOB = {"num_frames": 17, "num_inference_steps": 2, "acceleration": "none", "seed": 1}


@pytest.fixture(scope="session")
def server_weights(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny weights: conftest's ``tiny_weights`` when it has one, so a full run builds them once."""
    try:
        return request.getfixturevalue("tiny_weights")
    except pytest.FixtureLookupError:
        return build_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def control_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """17-frame, 416x240 pose and depth control videos."""
    folder = tmp_path_factory.mktemp("control")
    return {task: write_sample(task, folder / f"{task}.mp4", num_frames=17) for task in ("pose", "depth")}


def require(available: bool, reason: str) -> None:
    """Skip the test when an engine it needs is missing here; in CI (``CI=true``) that is a failure instead, since
    CI installs everything the suite needs."""
    if not available:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"missing in CI: {reason}")
        pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


def keyed_client(url: str, key: str) -> httpx.Client:
    """An HTTP client for a server that asks for ``key``, patient enough for a tiny job on two shared cores."""
    return httpx.Client(base_url=url, headers={"authorization": f"Key {key}"}, timeout=60)


class ServeProcess:
    """``vace serve`` as a child process (the real CLI), which a test can kill outright."""

    def __init__(
        self,
        weights: Path,
        data_dir: Path,
        *,
        tls: bool = False,
        api_key: str | None = None,
        port: int | None = None,
        files: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``extra_args``: more ``vace serve`` flags (``--read-timeout-s 1``, ...)."""
        self.weights, self.data_dir, self.tls, self.api_key, self.files = weights, data_dir, tls, api_key, files
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def cert(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client needs to trust this server."""
        return ssl.create_default_context(cafile=self.cert) if self.tls else True

    def client(self) -> httpx.Client:
        headers = {"authorization": f"Key {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, verify=self.verify, headers=headers, timeout=60)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout_s: float = 180) -> ServeProcess:
        args = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--weights-dir",
            str(self.weights),
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
        ]
        if self.tls:
            args.append("--tls")
        if self.api_key:
            args += ["--api-keys", self.api_key]
        if self.files:
            args += ["--files", self.files]
        args += self.extra_args
        # One intra-op thread: test machines share their few cores, and oversubscribed OpenMP threads spin-wait
        # (a tiny job is ~3x slower with 2 threads than with 1 when other processes compete for the cores).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        env.pop("VACE_API_KEYS", None)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"vace serve exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if self.tls and not self.cert.exists():
                return False
            try:
                with self.client() as c:
                    return c.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(healthy, timeout_s, "vace serve to answer /health", interval_s=0.25)
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the server's whole process group (it and its ffmpeg children): a crash, no cleanup."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        """A graceful stop (SIGTERM), falling back to a kill."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()


class ThreadServer:
    """The app in uvicorn on a thread of the test process: a real HTTP server whose internals tests can reach, its
    workers included (they run as threads here, ``--worker-threads``; ``ServeProcess`` runs the default, a worker
    process per device)."""

    def __init__(self, config: Settings) -> None:
        config = config.model_copy(update={"worker_threads": True})
        self.config = config
        self.app = create_app(config)
        self.server = uvicorn.Server(uvicorn_config(self.app, config, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 120, "the in-process server to start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)


class Receiver:
    """A loopback webhook endpoint: records every delivery (headers and raw body) and answers from ``plan``
    (status codes in order, then 200); ``/redirect`` answers 302 to ``redirect_to``."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.plan: list[int] = []
        self.redirect_to = ""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("location", receiver.redirect_to)
                else:
                    self.send_response(receiver.plan.pop(0) if receiver.plan else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def for_job(self, request_id: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in self.deliveries if json.loads(b)["request_id"] == request_id]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def verify_like_fals_docs(headers: dict[str, str], body: bytes, jwks: dict[str, Any], now: float | None = None) -> bool:
    """fal's documented receiver check: timestamp within 5 minutes, then ED25519 over
    ``request_id \\n user_id \\n timestamp \\n sha256_hex(body)`` with any key of the JWKS."""
    timestamp = headers["x-fal-webhook-timestamp"]
    if abs((time.time() if now is None else now) - int(timestamp)) > 300:
        return False
    message = "\n".join(
        [
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            timestamp,
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()
    for key in jwks["keys"]:
        x = key["x"] + "=" * (-len(key["x"]) % 4)
        try:
            Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x)).verify(
                bytes.fromhex(headers["x-fal-webhook-signature"]), message
            )
            return True
        except (InvalidSignature, ValueError):
            continue
    return False
