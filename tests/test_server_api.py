"""The HTTP protocol against a live server (in-process uvicorn, real HTTP on loopback, tiny weights).

Jobs are the expensive part, so one queue scenario carries most protocol assertions: a long job is cancelled while
running (and watched over SSE), a queued one is cancelled before it runs, one real job completes (with a webhook
that fails once and is retried) and two jobs fail on their inputs. The server hands out URLs under a public URL
that does not resolve, so the job that reads an uploaded video proves that our own file URLs are read from disk.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fixtures import SMALL_JOB, ThreadServer, control_videos, free_port, keyed_client, server_weights, wait_until  # noqa: F401

from server import cli
from server.config import Settings
from server.falclient import use_server

API_KEY = "test-key-123"
PUBLIC = "http://vace.invalid:9"  # never resolves: anything fetched through it must come from disk
POSE = "/fal-ai/wan-vace-14b/pose"
QUEUE_POSE = "/queue/fal-ai/wan-vace-14b/pose"
QUEUE_DEPTH = "/queue/fal-ai/wan-22-vace-fun-a14b/depth"
REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"


@pytest.fixture(scope="module")
def server(
    server_weights: Path, tmp_path_factory: pytest.TempPathFactory, webhook_receiver: tuple[str, list[dict[str, Any]]]
) -> Iterator[ThreadServer]:
    receiver = webhook_receiver[0].split("/")[2]  # webhooks go to public addresses or their allow-list
    config = Settings(
        webhook_allow=(receiver,),
        weights_dir=server_weights,
        data_dir=tmp_path_factory.mktemp("api-data"),
        port=free_port(),
        api_keys=frozenset({API_KEY}),
        public_url=PUBLIC,
        max_upload_bytes=4 * 1024 * 1024,
        webhook_attempts=3,
        webhook_backoff_s=0.2,
    )
    with ThreadServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[httpx.Client]:
    with keyed_client(server.url, API_KEY) as c:
        yield c


@pytest.fixture(scope="module")
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback webhook endpoint that answers 500 to the first delivery of each request, 200 after."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            first = all(r["request_id"] != body["request_id"] for r in received)
            received.append(body)
            self.send_response(500 if first else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    httpd.shutdown()


def local(server: ThreadServer, url: str) -> str:
    """A URL the server handed out (under the unresolvable public URL), as reachable from the test."""
    assert url.startswith(PUBLIC + "/"), url
    return server.url + url[len(PUBLIC) :]


def upload(client: httpx.Client, server: ThreadServer, data: bytes, name: str, content_type: str) -> str:
    urls = client.post("/storage/upload/initiate", json={"file_name": name, "content_type": content_type}).json()
    assert httpx.put(local(server, urls["upload_url"]), content=data).status_code == 200  # no key: the URL is the grant
    return urls["file_url"]


def status(client: httpx.Client, request_id: str, logs: bool = True) -> dict[str, Any]:
    response = client.get(f"{REQUESTS}/{request_id}/status", params={"logs": int(logs)})
    assert response.status_code == (200 if response.json()["status"] == "COMPLETED" else 202)
    assert response.headers["x-fal-request-id"] == request_id
    return response.json()


def messages(body: dict[str, Any]) -> list[str]:
    return [line["message"] for line in body["logs"]]


def test_health_is_open_everything_else_needs_a_key(server: ThreadServer) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    body = {"prompt": "x", "video_url": "https://example.com/v.mp4"}
    for headers in ({}, {"authorization": "Key wrong"}, {"authorization": f"Bearer {API_KEY}"}):
        response = httpx.post(f"{server.url}{QUEUE_POSE}", json=body, headers=headers)
        assert response.status_code == 401 and isinstance(response.json()["detail"], str)
    assert httpx.get(f"{server.url}{REQUESTS}/x/status").status_code == 401
    assert httpx.post(f"{server.url}/storage/upload/initiate", json={}).status_code == 401


@pytest.mark.parametrize(
    ("fields", "loc", "type_"),
    [
        ({"num_frames": 500}, ["body", "num_frames"], "less_than_equal"),
        ({"num_inference_steps": 1}, ["body", "num_inference_steps"], "greater_than_equal"),
        ({"guidance_scale": "loud"}, ["body", "guidance_scale"], "float_parsing"),
        ({"sampler": "ddim"}, ["body", "sampler"], "literal_error"),
        ({"ref_image_urls": "https://x/a.png"}, ["body", "ref_image_urls"], "list_type"),
        ({"prompt": None}, ["body", "prompt"], "string_type"),
        ({"video_url": "/etc/hosts"}, ["body", "video_url"], "file_download_error"),
        ({"video_url": "file:///etc/hosts"}, ["body", "video_url"], "file_download_error"),
        ({"first_frame_url": "~/me.png"}, ["body", "first_frame_url"], "file_download_error"),
        ({"ref_image_urls": ["https://x/a.png", "/etc/hosts"]}, ["body", "ref_image_urls", 1], "file_download_error"),
    ],
)
def test_validation_errors_are_fal_shaped(client: httpx.Client, fields: dict, loc: list, type_: str) -> None:
    body = {"prompt": "x", "video_url": "https://example.com/v.mp4", **fields}
    for path in (POSE, QUEUE_POSE):
        response = client.post(path, json=body)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert {"loc", "msg", "type"} <= set(detail[0]) and "input" not in detail[0]
        assert [(d["loc"], d["type"]) for d in detail] == [(loc, type_)]
    if type_ == "less_than_equal":
        assert detail[0]["ctx"] == {"le": 241}


def test_missing_fields_bad_json_unknown_routes(client: httpx.Client) -> None:
    response = client.post(QUEUE_POSE, json={})
    assert {tuple(d["loc"]) for d in response.json()["detail"]} == {("body", "prompt"), ("body", "video_url")}
    bad = client.post(QUEUE_POSE, content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["type"] == "json_invalid"
    hook = client.post(QUEUE_POSE, params={"fal_webhook": "ftp://x"}, json={"prompt": "x", "video_url": "https://e/v"})
    assert hook.status_code == 422 and hook.json()["detail"][0]["loc"] == ["query", "fal_webhook"]
    for path in ("/fal-ai/nope/pose", "/fal-ai/wan-vace-14b/canny", "/queue/fal-ai/wan-vace-14b/canny"):
        response = client.post(path, json={"prompt": "x", "video_url": "https://e/v"})
        assert response.status_code == 404 and "fal-ai/wan-vace-14b/pose" in response.json()["detail"]
    assert client.get(f"{REQUESTS}/00000000-0000-0000-0000-000000000000/status").status_code == 404
    assert client.get("/queue/fal-ai/unknown/requests/abc/status").status_code == 404


def test_openapi_ready_metrics_index(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        POSE,
        "/fal-ai/wan-22-vace-fun-a14b/depth",
        QUEUE_DEPTH,
        "/storage/upload/initiate",
        "/queue/{owner}/{alias}/requests/{request_id}/status",
        "/queue/{owner}/{alias}/requests/{request_id}",
    ):
        assert path in spec["paths"], path
    schema = spec["components"]["schemas"]["VaceInput"]
    assert {"prompt", "video_url"} <= set(schema["required"])
    assert (schema["properties"]["num_frames"]["minimum"], schema["properties"]["num_frames"]["maximum"]) == (17, 241)
    assert schema["properties"]["interpolator_model"]["default"] == "film"
    assert "VaceOutput" in spec["components"]["schemas"] and "QueueStatus" in spec["components"]["schemas"]
    ready = client.get("/ready").json()
    assert ready["ready"] and all(e["weights_present"] for e in ready["endpoints"].values())
    metrics = client.get("/metrics").text
    assert "vace_queue_depth 0.0" in metrics
    assert 'vace_queue_depth_by_endpoint{app="fal-ai/wan-vace-14b",priority="low",task="pose"} 0.0' in metrics
    assert "vace-server playground" in client.get("/").text  # the page builds its endpoint list from /openapi.json


def test_uploads_both_client_flows(server: ThreadServer, client: httpx.Client) -> None:
    data = bytes(range(256)) * 400
    file_url = upload(client, server, data, "clip.mp4", "video/mp4")
    assert file_url.startswith(f"{PUBLIC}/files/") and file_url.endswith("/clip.mp4")
    got = httpx.get(local(server, file_url))
    assert got.content == data and got.headers["content-type"] == "video/mp4"
    ranged = httpx.get(local(server, file_url), headers={"range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.content == data[:10]

    token = client.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}).json()
    assert token["token_type"] == "Bearer" and token["base_url"] == PUBLIC
    cdn = {"authorization": f"Bearer {token['token']}", "content-type": "image/png", "x-fal-file-name": "a b.png"}
    access_url = httpx.post(f"{server.url}/files/upload", content=b"png", headers=cdn).json()["access_url"]
    assert access_url.endswith("/a_b.png") and httpx.get(local(server, access_url)).content == b"png"
    for bad in ({}, {"authorization": "Bearer 1.abc"}):
        assert httpx.post(f"{server.url}/files/upload", content=b"x", headers=bad).status_code == 401

    # @fal-ai/client's multipart flow: parts under upload_url, then upload_url/complete.
    urls = client.post("/storage/upload/initiate-multipart", json={"file_name": "big.bin"}).json()
    part_url = local(server, urls["upload_url"])
    etags = [httpx.put(f"{part_url}/{n}", content=bytes([n]) * 1000).json() for n in (1, 2)]
    assert [e["partNumber"] for e in etags] == [1, 2]
    assert httpx.post(f"{part_url}/complete", json={"parts": etags}).status_code == 200
    assert httpx.get(local(server, urls["file_url"])).content == b"\x01" * 1000 + b"\x02" * 1000

    # fal-client's multipart flow: parts under the file URL, sent in any order.
    started = httpx.post(f"{server.url}/files/upload/multipart", headers={**cdn, "x-fal-file-name": "v.mp4"}).json()
    base = local(server, started["access_url"])
    parts = []
    for n in (2, 1):
        response = httpx.put(f"{base}/multipart/{started['uploadId']}/{n}", content=bytes([n]) * 10, headers=cdn)
        parts.append({"partNumber": n, "etag": response.headers["etag"]})
    bearer = {"authorization": cdn["authorization"]}
    httpx.post(f"{base}/multipart/{started['uploadId']}/complete", json={"parts": parts}, headers=bearer)
    assert httpx.get(base).content == b"\x01" * 10 + b"\x02" * 10

    too_big = client.post("/storage/upload/initiate", json={"file_name": "huge.bin"}).json()
    assert httpx.put(local(server, too_big["upload_url"]), content=b"0" * (5 * 1024 * 1024)).status_code == 413
    assert httpx.get(local(server, too_big["file_url"])).status_code == 404
    assert httpx.put(local(server, urls["upload_url"]), content=b"again").status_code == 404  # one-shot
    assert httpx.get(f"{server.url}/files/not-a-token/x.mp4").status_code == 404


def test_serve_refuses_an_open_host_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("VACE_API_KEYS", raising=False)
    assert cli.main(["serve", "--host", "0.0.0.0", "--weights-dir", "/nonexistent"]) == 2
    assert "no API key" in capsys.readouterr().err


def test_fal_client_over_plain_http_with_the_helper(server: ThreadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """One line (``use_server``) points fal-client at an http server: its CDN upload flow and sync runs work."""
    import fal_client
    import fal_client.client as fal_module

    for name in ("RUN_URL_FORMAT", "QUEUE_URL_FORMAT", "REST_URL", "CDN_URL", "REALTIME_URL_FORMAT"):
        monkeypatch.setattr(fal_module, name, getattr(fal_module, name))  # restored after the test
    monkeypatch.setenv("FAL_KEY", "unused")
    use_server(server.url, key=API_KEY)
    client = fal_client.SyncClient()
    url = client.upload(b"\x00not a video" * 50, "video/mp4", file_name="garbage.mp4")
    assert url.startswith(f"{PUBLIC}/files/") and url.endswith("/garbage.mp4")
    with pytest.raises(fal_client.FalClientHTTPError) as failed:
        client.run("fal-ai/wan-vace-14b/pose", {"prompt": "x", "video_url": url, **SMALL_JOB})
    assert failed.value.status_code == 422 and failed.value.error_type == "video_decode_error"
    request_id = failed.value.response_headers["x-fal-request-id"]
    assert client.status("fal-ai/wan-vace-14b/pose", request_id).error_type == "video_decode_error"  # type: ignore[union-attr]


def test_queue_lifecycle(
    server: ThreadServer,
    client: httpx.Client,
    control_videos: dict[str, Path],
    webhook_receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    hook_url, hooks = webhook_receiver
    pose_url = upload(client, server, control_videos["pose"].read_bytes(), "pose.mp4", "video/mp4")
    depth_url = upload(client, server, control_videos["depth"].read_bytes(), "depth.mp4", "video/mp4")
    garbage_url = upload(client, server, b"\x00not a video" * 100, "bad.mp4", "video/mp4")

    # A sync request whose input fails in the worker answers with the job's own 422.
    sync = client.post(POSE, json={"prompt": "x", "video_url": garbage_url, **SMALL_JOB})
    assert sync.status_code == 422 and sync.json()["detail"][0]["type"] == "video_decode_error"
    assert sync.headers["x-fal-request-id"] and sync.headers["x-fal-error-type"] == "video_decode_error"

    long_job = client.post(
        QUEUE_POSE, json={"prompt": "long", "video_url": pose_url, **SMALL_JOB, "num_inference_steps": 50}
    )
    submitted = long_job.json()
    long_id = submitted["request_id"]
    assert long_job.headers["x-fal-request-id"] == long_id and submitted["status"] == "IN_QUEUE"
    assert submitted["status_url"] == f"{PUBLIC}{REQUESTS}/{long_id}/status"
    assert submitted["cancel_url"] == f"{PUBLIC}{REQUESTS}/{long_id}/cancel"
    assert submitted["response_url"] == f"{PUBLIC}{REQUESTS}/{long_id}"
    wait_until(lambda: status(client, long_id)["status"] == "IN_PROGRESS", 60, "the long job to start")

    events: list[dict[str, Any]] = []

    def follow() -> None:
        with client.stream("GET", f"{REQUESTS}/{long_id}/status/stream", params={"logs": 1}, timeout=300) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-fal-request-id"] == long_id
            events.extend(json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: "))

    streamer = threading.Thread(target=follow)
    streamer.start()

    queued = [
        client.post(QUEUE_POSE, json={"prompt": "never runs", "video_url": pose_url, **SMALL_JOB}).json(),
        client.post(
            QUEUE_DEPTH,
            params={"fal_webhook": hook_url},
            json={"prompt": "a ball", "video_url": depth_url, "return_frames_zip": True, **SMALL_JOB},
        ).json(),
        client.post(
            QUEUE_POSE, params={"fal_webhook": hook_url}, json={"prompt": "x", "video_url": garbage_url, **SMALL_JOB}
        ).json(),
        client.post(
            QUEUE_POSE, json={"prompt": "x", "video_url": "http://127.0.0.1:9/missing.mp4", **SMALL_JOB}
        ).json(),
    ]
    assert [q["queue_position"] for q in queued] == [0, 1, 2, 3]
    never_id, depth_id, garbage_id, missing_id = (q["request_id"] for q in queued)

    cancelled = client.put(f"{REQUESTS}/{never_id}/cancel/")  # trailing slash, as the SDKs send it
    assert cancelled.status_code == 202 and cancelled.json() == {"status": "CANCELLATION_REQUESTED"}
    never = status(client, never_id)
    assert never["status"] == "COMPLETED" and never["error_type"] == "client_cancelled"
    assert not any(m.startswith("started") for m in messages(never))
    depth_status = client.get(f"/queue/fal-ai/wan-22-vace-fun-a14b/requests/{depth_id}/status/").json()
    assert depth_status["status"] == "IN_QUEUE" and depth_status["queue_position"] == 0

    wait_until(lambda: "step 1/50" in messages(status(client, long_id)), 120, "the long job's first step")
    assert client.put(f"{REQUESTS}/{long_id}/cancel").status_code == 202
    done = wait_until(lambda: (s := status(client, long_id))["status"] == "COMPLETED" and s, 60, "the cancel")
    steps = [int(m.split()[1].split("/")[0]) for m in messages(done) if m.startswith("step ")]
    assert done["error_type"] == "client_cancelled" and max(steps) < 50
    result = client.get(f"{REQUESTS}/{long_id}")
    assert result.status_code == 499 and result.json() == {
        "detail": "Request was cancelled",
        "error_type": "client_cancelled",
    }
    assert result.headers["x-fal-error-type"] == "client_cancelled"
    assert client.put(f"{REQUESTS}/{long_id}/cancel").json()["status"] == "ALREADY_COMPLETED"

    streamer.join(30)
    assert [e["status"] for e in events][-1] == "COMPLETED" and "IN_PROGRESS" in [e["status"] for e in events]
    streamed = [line["message"] for e in events for line in e["logs"]]  # each event carries only new lines
    assert streamed == messages(done)

    finished = wait_until(
        lambda: (s := status(client, missing_id, logs=False))["status"] == "COMPLETED" and s,
        300,
        "the queued jobs to finish",
    )
    # The worker has the pose model loaded, so the pose jobs may pass the depth job (scheduling): it may end last.
    depth_requests = "/queue/fal-ai/wan-22-vace-fun-a14b/requests"
    wait_until(
        lambda: client.get(f"{depth_requests}/{depth_id}/status").json()["status"] == "COMPLETED",
        300,
        "the depth job to finish",
    )
    assert finished["logs"] == [] and finished["error_type"] == "file_download_error"
    output = client.get(f"/queue/fal-ai/wan-22-vace-fun-a14b/requests/{depth_id}").json()
    assert output["prompt"] == "a ball" and output["seed"] == 1
    video = output["video"]
    assert (video["width"], video["height"], video["num_frames"], video["content_type"]) == (416, 240, 17, "video/mp4")
    assert httpx.get(local(server, video["url"])).content[4:8] == b"ftyp"
    with zipfile.ZipFile(io.BytesIO(httpx.get(local(server, output["frames_zip"]["url"])).content)) as frames:
        assert len(frames.namelist()) == 17
    depth_done = client.get(f"/queue/fal-ai/wan-22-vace-fun-a14b/requests/{depth_id}/status", params={"logs": "true"})
    assert depth_done.status_code == 200 and depth_done.json()["metrics"]["inference_time"] > 0
    assert {"step 1/2", "step 2/2", "fetching inputs"} <= set(messages(depth_done.json()))

    garbage = client.get(f"{REQUESTS}/{garbage_id}")
    assert garbage.status_code == 422 and garbage.json()["detail"][0]["loc"] == ["body", "video_url"]
    missing = client.get(f"{REQUESTS}/{missing_id}")
    assert missing.status_code == 422 and missing.json()["detail"][0]["type"] == "file_download_error"

    # Webhooks: each first delivery got a 500 and was retried.
    wait_until(lambda: len(hooks) == 4, 30, "webhook deliveries")
    by_id = {h["request_id"]: h for h in hooks}
    assert [h["request_id"] for h in hooks].count(depth_id) == 2
    assert by_id[depth_id]["status"] == "OK" and by_id[depth_id]["payload"] == output
    assert by_id[depth_id]["gateway_request_id"] == depth_id and by_id[depth_id]["error"] is None
    assert by_id[garbage_id]["status"] == "ERROR" and by_id[garbage_id]["payload"] == garbage.json()

    metrics = client.get("/metrics").text
    for line in (
        'vace_jobs{state="cancelled"} 2.0',
        'vace_jobs{state="completed"} 1.0',
        'vace_jobs{state="failed"} 4.0',
        "vace_queue_depth 0.0",
    ):
        assert line in metrics
    assert 'vace_job_duration_seconds_count{app="fal-ai/wan-22-vace-fun-a14b",outcome="ok",task="depth"} 1.0' in metrics
    assert 'vace_step_seconds_count{device="cpu",model="wan-vace-14b"}' in metrics


def test_cancelling_a_finished_request_is_a_fal_shaped_error(client: httpx.Client) -> None:
    """fal's 400 ``ALREADY_COMPLETED`` keeps its ``status`` and, like every error body, has a ``detail``."""
    submitted = client.post(QUEUE_POSE, json={"prompt": "x", "video_url": "data:,", **SMALL_JOB})  # empty: fails
    request_id = submitted.json()["request_id"]
    wait_until(lambda: status(client, request_id, logs=False)["status"] == "COMPLETED", 120, "the job to fail")
    response = client.put(f"{REQUESTS}/{request_id}/cancel")
    assert response.status_code == 400 and response.headers["x-fal-request-id"] == request_id
    assert response.json() == {"status": "ALREADY_COMPLETED", "detail": f"Request {request_id} has already completed"}
