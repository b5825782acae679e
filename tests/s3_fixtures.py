"""The S3 stand-in for the tests: moto's standalone server (``moto[server]``) as a child process on a free loopback
port, speaking the S3 HTTP API that boto3 talks to any S3-compatible store.

The fixture sets the standard AWS variables (``AWS_ENDPOINT_URL``, keys, region) in this process's environment for
the session, so the code under test (and the worker processes tests start, which inherit it) configures boto3 the
way an operator would. Without moto the tests skip with the reason, except in CI (``CI=true``), where that fails them.

Tests that hold for either file store run over ``FILE_STORES``: :func:`files_setting` gives the server's ``--files``
for one, and :func:`stored_names` lists what the server keeps there, so one test body checks both.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fixtures import free_port, require, wait_until

FILE_STORES = ("directory", "s3")
"""The file stores a server test can run over: its data directory (the default) or a bucket."""
AWS_ENV = {"AWS_ACCESS_KEY_ID": "vace-test", "AWS_SECRET_ACCESS_KEY": "vace-test-secret", "AWS_REGION": "us-east-1"}


class S3Server:
    """A running moto server and the buckets made on it."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._names = itertools.count(1)
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, 60, "the moto S3 server", interval_s=0.2)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"moto server exited:\n{self.log_path.read_text(errors='replace')[-2000:]}")
        try:
            return httpx.get(self.endpoint, timeout=5).status_code < 500
        except httpx.HTTPError:
            return False

    def client(self) -> Any:
        import boto3

        return boto3.client("s3")

    def new_bucket(self, prefix: str = "vace") -> str:
        """A fresh empty bucket; returns its ``s3://bucket/prefix`` URL."""
        name = f"test-{next(self._names)}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}/{prefix}" if prefix else f"s3://{name}"

    def objects(self, bucket_url: str) -> list[str]:
        """Every key in the bucket ``bucket_url`` names."""
        bucket = bucket_url.removeprefix("s3://").partition("/")[0]
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    require(
        importlib.util.find_spec("moto") is not None and importlib.util.find_spec("flask") is not None,
        "moto[server] is not installed (pip install -e .[test])",
    )
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    saved = {name: os.environ.get(name) for name in (*AWS_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ENV, AWS_ENDPOINT_URL=server.endpoint)
    try:
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


def files_setting(store: str, request: pytest.FixtureRequest) -> str | None:
    """The ``--files`` of a server keeping its files in ``store`` (one of ``FILE_STORES``): None for the data
    directory, else a fresh bucket on the session's S3 server (started on first use)."""
    if store == "directory":
        return None
    server: S3Server = request.getfixturevalue("s3_server")
    return server.new_bucket()


def stored_names(files: str | None, data_dir: Path) -> list[str]:
    """The names of the files (not uploads in progress) a server with ``--files files`` and ``data_dir`` keeps,
    sorted, from the directory or the bucket itself."""
    if files is None:
        return sorted(path.name for path in (data_dir / "files").rglob("*") if path.is_file())
    import boto3

    from server.files.s3 import parse_s3_url

    bucket, prefix = parse_s3_url(files)
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}files/")
    return sorted(obj["Key"].rpartition("/")[2] for page in pages for obj in page.get("Contents", []))
