"""The server with its files in an S3 bucket (``--files s3://bucket/prefix``, moto's S3 server standing in).

Every upload flow of both fal clients puts its bytes in the bucket through the API; ``GET /files/...`` redirects to
a presigned URL of the bucket, with non-passive files still offered as downloads; a job reads its upload from the
bucket (its ``/files/`` URL is under a public URL the test machine cannot even resolve) and its output URL is a
presigned URL that downloads the video; retention empties the bucket of what it keeps no longer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from s3_fixtures import S3Server, s3_server  # noqa: F401
from server_fixtures import SMALL_JOB, ThreadServer, control_videos, free_port, keyed_client, server_weights, wait_until  # noqa: F401

from server import cli
from server.config import Settings
from server.runtime.retention import Retention

API_KEY = "s3-test-key"
PUBLIC = "http://vace.invalid"  # never resolves: whatever the server reads of its own, it reads from the bucket
REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@pytest.fixture(scope="module")
def server(
    server_weights: Path,
    bucket: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ThreadServer]:
    config = Settings(
        weights_dir=server_weights,
        data_dir=tmp_path_factory.mktemp("s3-node"),
        port=free_port(),
        files=bucket,
        api_keys=frozenset({API_KEY}),
        public_url=PUBLIC,
        max_upload_bytes=4 * 1024 * 1024,
        files_url_ttl_s=900,
    )
    with ThreadServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[httpx.Client]:
    with keyed_client(server.url, API_KEY) as c:
        yield c


def local(server: ThreadServer, url: str) -> str:
    assert url.startswith(PUBLIC + "/"), url
    return server.url + url[len(PUBLIC) :]


def served(server: ThreadServer, file_url: str) -> httpx.Response:
    """What a browser gets for one of our ``/files/`` URLs: a redirect to the bucket, followed."""
    redirect = httpx.get(local(server, file_url), timeout=30)
    assert redirect.status_code == 307, redirect.text
    location = redirect.headers["location"]
    assert location.startswith(f"{s3_endpoint()}/") and "X-Amz-Signature=" in location
    assert "X-Amz-Expires=900" in location  # --files-url-ttl-s
    return httpx.get(location, timeout=30)


def s3_endpoint() -> str:
    return os.environ["AWS_ENDPOINT_URL"]  # set by the s3_server fixture


def test_upload_flows_put_bytes_in_the_bucket(
    server: ThreadServer, client: httpx.Client, bucket: str, s3_server: S3Server
) -> None:
    data = bytes(range(256)) * 400
    urls = client.post("/storage/upload/initiate", json={"file_name": "clip.mp4", "content_type": "video/mp4"}).json()
    assert httpx.put(local(server, urls["upload_url"]), content=data).status_code == 200  # no key: the URL is the grant
    got = served(server, urls["file_url"])
    assert got.content == data and got.headers["content-type"] == "video/mp4"
    assert "content-disposition" not in got.headers
    prefix = bucket.removeprefix("s3://").partition("/")[2]
    assert f"{prefix}/files/{urls['file_url'].split('/files/')[1]}" in s3_server.objects(bucket)
    assert httpx.put(local(server, urls["upload_url"]), content=b"again").status_code == 404  # one-shot

    token = client.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}).json()
    cdn = {"authorization": f"Bearer {token['token']}", "content-type": "text/html", "x-fal-file-name": "page.html"}
    sent = httpx.post(f"{server.url}/files/upload", content=b"<script>x</script>", headers=cdn)
    page = served(server, sent.json()["access_url"])  # not passive media: a download, never a page
    assert page.content == b"<script>x</script>" and page.headers["content-type"] == "application/octet-stream"
    assert page.headers["content-disposition"] == 'attachment; filename="page.html"'

    # @fal-ai/client's multipart flow, parts under upload_url; then fal-client's, parts under the file URL.
    started = client.post("/storage/upload/initiate-multipart", json={"file_name": "big.bin"}).json()
    part_url = local(server, started["upload_url"])
    etags = [httpx.put(f"{part_url}/{n}", content=bytes([n]) * 1000).json() for n in (1, 2)]
    assert httpx.post(f"{part_url}/complete", json={"parts": etags}).status_code == 200
    assert served(server, started["file_url"]).content == b"\x01" * 1000 + b"\x02" * 1000
    cdn["content-type"], cdn["x-fal-file-name"] = "video/mp4", "v.mp4"
    started = httpx.post(f"{server.url}/files/upload/multipart", headers=cdn).json()
    base = local(server, started["access_url"])
    parts = [
        {
            "partNumber": n,
            "etag": httpx.put(
                f"{base}/multipart/{started['uploadId']}/{n}", content=bytes([n]) * 10, headers=cdn
            ).headers["etag"],
        }
        for n in (2, 1)
    ]
    completed = httpx.post(
        f"{base}/multipart/{started['uploadId']}/complete",
        json={"parts": parts},
        headers={"authorization": cdn["authorization"]},
    )
    assert completed.status_code == 200 and served(server, started["access_url"]).content == b"\x01" * 10 + b"\x02" * 10

    too_big = client.post("/storage/upload/initiate", json={"file_name": "huge.bin"}).json()
    assert httpx.put(local(server, too_big["upload_url"]), content=b"0" * (5 * 1024 * 1024)).status_code == 413
    assert httpx.get(local(server, too_big["file_url"])).status_code == 404
    assert httpx.get(f"{server.url}/files/{'A' * 32}/missing.mp4").status_code == 404


def test_a_job_reads_its_upload_from_the_bucket_and_its_output_is_presigned(
    server: ThreadServer, client: httpx.Client, control_videos: dict[str, Path], bucket: str, s3_server: S3Server
) -> None:
    urls = client.post("/storage/upload/initiate", json={"file_name": "pose.mp4", "content_type": "video/mp4"}).json()
    assert httpx.put(local(server, urls["upload_url"]), content=control_videos["pose"].read_bytes()).status_code == 200
    submitted = client.post(
        "/queue/fal-ai/wan-vace-14b/pose", json={"prompt": "a dancer", "video_url": urls["file_url"], **SMALL_JOB}
    ).json()
    request_id = submitted["request_id"]
    done = wait_until(
        lambda: (s := client.get(f"{REQUESTS}/{request_id}/status").json())["status"] == "COMPLETED" and s,
        300,
        "the job",
    )
    assert done.get("error_type") is None, done
    result = client.get(f"{REQUESTS}/{request_id}").json()
    video_url = result["video"]["url"]
    assert video_url.startswith(f"{s3_endpoint()}/") and "X-Amz-Signature=" in video_url
    video = httpx.get(video_url, timeout=30)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp" and video.headers["content-type"] == "video/mp4"
    abandoned = client.post("/storage/upload/initiate", json={"file_name": "never.mp4"}).json()
    assert httpx.get(local(server, abandoned["file_url"])).status_code == 404  # initiated, never sent

    registry = CollectorRegistry()
    retention = Retention(
        server.app.state.store,
        server.app.state.files,
        max_age_s=3600,
        interval_s=60,
        deleted=Counter("deleted", "test", ["kind"], registry=registry),
    )
    assert retention.sweep(time.time() - 3600).files == 0  # nothing is an hour old yet
    swept = retention.sweep(time.time() + 7200)
    assert swept.files >= 2 and swept.uploads >= 1  # at least the input and the output video; the upload never sent
    assert s3_server.objects(bucket) == []
    assert httpx.get(video_url, timeout=30).status_code in (403, 404)  # S3 says 403 to a missing key, as moto does


def test_a_presigned_url_lifetime_past_seven_days_is_refused_at_startup() -> None:
    """SigV4 caps presigned URLs at seven days, and stores refuse a longer one only when it is used: the setting is
    checked before a node starts (``vace worker`` takes the same flag)."""
    for command in ("serve", "worker"):
        args = cli.build_parser().parse_args([command, "--files", "s3://b/p", "--files-url-ttl-s", "604801"])
        with pytest.raises(cli.SettingsError, match="files_url_ttl_s: Input should be less than or equal to 604800"):
            cli.settings(args)
    args = cli.build_parser().parse_args(["serve", "--files-url-ttl-s", "604800"])
    assert cli.settings(args).files_url_ttl_s == 604800
