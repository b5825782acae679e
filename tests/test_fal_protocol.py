"""fal's protocol beyond the basics, through raw HTTP and the real fal-client: signed and vetted webhooks with fal's
retry policy, queue priority, start timeouts, runner hints, task-inclusive request routes, log levels, error
bodies and types, ``gateway_request_id``, JSON under a form content type, CORS. Live servers on loopback, tiny
weights.

The webhook receiver verifies signatures the way fal's documentation tells receivers to (JWKS, ED25519 over
request id, user id, timestamp and the body's SHA-256), written here from those docs, not with our signing code.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fixtures import (  # noqa: F401
    SMALL_JOB,
    Receiver,
    ThreadServer,
    control_videos,
    free_port,
    server_weights,
    verify_like_fals_docs,
    wait_until,
)

from server.config import Settings
from server.falclient import use_server

KEY = "protocol-key"
AUTH = {"authorization": f"Key {KEY}"}
APP = "fal-ai/wan-vace-14b"
POSE = f"{APP}/pose"
ORIGIN = "https://studio.example"
LEVELS = {"STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture(scope="module")
def server(
    server_weights: Path, tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[ThreadServer]:
    config = Settings(
        weights_dir=server_weights,
        data_dir=tmp_path_factory.mktemp("protocol") / "data",
        port=free_port(),
        api_keys=frozenset({KEY}),
        webhook_allow=(f"127.0.0.1:{receiver.port}",),
        webhook_attempts=3,
        webhook_backoff_s=0.3,
        cors_origins=(ORIGIN,),
    )
    with ThreadServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


@pytest.fixture
def fal(server: ThreadServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """fal-client's SyncClient pointed at the server (module settings restored after the test)."""
    import fal_client
    import fal_client.client as fal_module

    for name in ("RUN_URL_FORMAT", "QUEUE_URL_FORMAT", "REST_URL", "CDN_URL", "REALTIME_URL_FORMAT"):
        monkeypatch.setattr(fal_module, name, getattr(fal_module, name))
    monkeypatch.setenv("FAL_KEY", KEY)
    use_server(server.url, key=KEY)
    return fal_client.SyncClient()


def status(client: httpx.Client, request_id: str, path: str = f"/queue/{APP}") -> dict[str, Any]:
    return client.get(f"{path}/requests/{request_id}/status", params={"logs": 1}).json()


def messages(body: dict[str, Any]) -> list[str]:
    return [line["message"] for line in body["logs"]]


def started_at(client: httpx.Client, request_id: str) -> float:
    """When the job's run began, from the timestamp of its "started on" log line."""
    from datetime import datetime

    line = next(line for line in status(client, request_id)["logs"] if line["message"].startswith("started on"))
    return datetime.fromisoformat(line["timestamp"]).timestamp()


def test_queue_priority_start_timeout_hint_and_signed_webhooks(
    server: ThreadServer,
    client: httpx.Client,
    fal: Any,
    receiver: Receiver,
    control_videos: dict[str, Path],
) -> None:
    import fal_client

    video = "data:video/mp4;base64," + base64.b64encode(control_videos["pose"].read_bytes()).decode()
    job = {"prompt": "x", "video_url": video, **SMALL_JOB}
    busy = client.post(f"/queue/{POSE}", json={**job, "num_inference_steps": 50}).json()["request_id"]
    wait_until(lambda: "step 1/50" in messages(status(client, busy)), 120, "the long job's first step")

    # While the worker is busy: a low job queued before a normal one, and one that may wait 2 s at most.
    receiver.plan = [500]  # the first delivery fails; the retry is accepted
    low = fal.submit(POSE, job, priority="low", webhook_url=receiver.url, hint="gpu-pool-b")
    normal = fal.submit(POSE, job)
    doomed = fal.submit(POSE, job, start_timeout=2)
    sync_timeout = client.post(f"/{POSE}", json=job, headers={"x-fal-request-timeout": "2"})
    assert sync_timeout.status_code == 504 and sync_timeout.headers["x-fal-request-timeout-type"] == "user"
    assert sync_timeout.json()["error_type"] == "request_timeout" == sync_timeout.headers["x-fal-error-type"]

    assert status(client, normal.request_id)["queue_position"] == 0  # normal goes ahead of the earlier low one
    assert status(client, low.request_id)["queue_position"] == 1
    assert "runner hint: gpu-pool-b" in messages(status(client, low.request_id))
    with pytest.raises(fal_client.FalClientHTTPError) as timed_out:  # 504 + timeout type user: no retry
        fal.result(POSE, doomed.request_id)
    assert timed_out.value.status_code == 504 and timed_out.value.error_type == "request_timeout"
    assert timed_out.value.response_headers["x-fal-request-timeout-type"] == "user"
    assert "did not start within" in status(client, doomed.request_id)["error"]

    assert client.put(f"/queue/{APP}/requests/{busy}/cancel").status_code == 202
    for request_id in (low.request_id, normal.request_id):
        wait_until(lambda r=request_id: status(client, r)["status"] == "COMPLETED", 180, "the queued jobs")
    assert started_at(client, normal.request_id) < started_at(client, low.request_id)
    assert fal.result(POSE, low.request_id)["video"]["url"].startswith(server.url)
    assert "started on" not in " ".join(messages(status(client, doomed.request_id)))  # it never ran

    # fal's levels only (the cancel logged a WARN), on every job.
    for request_id in (busy, low.request_id, normal.request_id, doomed.request_id):
        assert {line["level"] for line in status(client, request_id)["logs"]} <= LEVELS
    assert "WARN" in {line["level"] for line in status(client, busy)["logs"]}

    # The webhook: first attempt refused, the retry delivered; both signed, verifiable from our JWKS.
    wait_until(lambda: len(receiver.for_job(low.request_id)) >= 2, 30, "the webhook retry")
    jwks = httpx.get(f"{server.url}/.well-known/jwks.json").json()  # public: no key
    assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
    for headers, body in receiver.for_job(low.request_id):
        assert headers["x-fal-webhook-request-id"] == low.request_id
        assert verify_like_fals_docs(headers, body, jwks)
    headers, body = receiver.for_job(low.request_id)[-1]
    delivered = json.loads(body)
    assert delivered["status"] == "OK" and delivered["gateway_request_id"] == low.request_id
    assert delivered["payload"]["video"]["url"].startswith(server.url)
    assert not verify_like_fals_docs(headers, body.replace(b'"OK"', b'"ER"'), jwks)  # tampered body
    assert not verify_like_fals_docs(headers, body, jwks, now=time.time() + 301)  # an old timestamp
    tampered = {**headers, "x-fal-webhook-user-id": "someone-else"}
    assert not verify_like_fals_docs(tampered, body, jwks)


def test_task_inclusive_routes_gateway_id_and_error_bodies(client: httpx.Client) -> None:
    submitted = client.post(
        f"/queue/{POSE}",
        json={"prompt": "x", "video_url": "data:video/mp4;base64,AAAA", **SMALL_JOB},
        headers={"x-fal-queue-priority": "low"},
    ).json()
    request_id = submitted["request_id"]
    assert submitted["gateway_request_id"] == request_id
    for path in (f"/queue/{APP}", f"/queue/{POSE}"):  # fal-client's form and fal's per-endpoint OpenAPI form
        assert client.get(f"{path}/requests/{request_id}/status").status_code in (200, 202)
    wrong_task = client.get(f"/queue/{APP}/depth/requests/{request_id}/status")
    assert wrong_task.status_code == 404
    spec = client.get("/openapi.json").json()["paths"]
    assert "/queue/{owner}/{alias}/{task}/requests/{request_id}/status" in spec
    wait_until(lambda: client.get(f"/queue/{POSE}/requests/{request_id}/status").status_code == 200, 60, "the end")
    result = client.get(f"/queue/{POSE}/requests/{request_id}")
    assert result.status_code == 422 and isinstance(result.json()["detail"], list)  # a model error: fal's list
    with client.stream("GET", f"/queue/{POSE}/requests/{request_id}/status/stream") as stream:
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1]["status"] == "COMPLETED"
    cancel = client.put(f"/queue/{POSE}/requests/{request_id}/cancel")
    assert cancel.status_code == 400 and cancel.json()["status"] == "ALREADY_COMPLETED"

    for header, value in (
        ("x-fal-request-timeout", "soon"),
        ("x-fal-request-timeout", "-3"),
        ("x-fal-queue-priority", "urgent"),
    ):
        bad = client.post(
            f"/queue/{POSE}", json={"prompt": "x", "video_url": "https://example.com/v.mp4"}, headers={header: value}
        )
        assert bad.status_code == 400 and bad.json()["error_type"] == "bad_request", (header, bad.text)
        assert bad.headers["x-fal-error-type"] == "bad_request" and header in bad.json()["detail"].lower()


def test_json_under_a_form_content_type_needs_an_authorization_header(
    client: httpx.Client,
    server_weights: Path,
    tmp_path: Path,
) -> None:
    body = json.dumps({"prompt": "x", "video_url": "https://example.com/v.mp4", "num_frames": 500})
    form = {"content-type": "application/x-www-form-urlencoded"}  # what curl -d sends
    refused = client.post(f"/queue/{POSE}", content=body, headers=form)  # parsed as JSON: the schema answers
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "num_frames"]
    open_config = Settings(weights_dir=server_weights, data_dir=tmp_path / "data", port=free_port())
    with ThreadServer(open_config) as open_server:  # auth off: no Authorization header, so no JSON from a form
        no_auth = httpx.post(f"{open_server.url}/queue/{POSE}", content=body, headers=form)
        assert no_auth.status_code == 415 and no_auth.json()["detail"][0]["loc"] == ["header", "content-type"]
        with_auth = httpx.post(f"{open_server.url}/queue/{POSE}", content=body, headers={**form, **AUTH})
        assert with_auth.json()["detail"][0]["loc"] == ["body", "num_frames"]
        preflight = httpx.options(
            f"{open_server.url}/queue/{POSE}", headers={"origin": ORIGIN, "access-control-request-method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers  # CORS is opt-in


def test_cors_preflight_for_allowed_origins_only(server: ThreadServer) -> None:
    asked = {"access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type"}
    allowed = httpx.options(f"{server.url}/queue/{POSE}", headers={"origin": ORIGIN, **asked})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-credentials" not in allowed.headers
    other = httpx.options(f"{server.url}/queue/{POSE}", headers={"origin": "https://evil.example", **asked})
    assert "access-control-allow-origin" not in other.headers
    answer = httpx.get(f"{server.url}/health", headers={"origin": ORIGIN})
    assert answer.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{other}/hook",
        "http://localhost:{other}/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/hook",
        "http://[::1]/hook",
        "http://0x7f.1/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
    ],
)
def test_webhooks_to_private_targets_are_refused_at_submission(client: httpx.Client, target: str) -> None:
    url = target.format(other=free_port())
    refused = client.post(
        f"/queue/{POSE}", params={"fal_webhook": url}, json={"prompt": "x", "video_url": "https://example.com/v.mp4"}
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["query", "fal_webhook"]


def test_a_webhook_redirect_is_not_followed(client: httpx.Client, receiver: Receiver) -> None:
    hidden = Receiver()  # a loopback service the allow-list does not name
    try:
        receiver.redirect_to = hidden.url
        hook = f"http://127.0.0.1:{receiver.port}/redirect"
        request_id = client.post(
            f"/queue/{POSE}",
            params={"fal_webhook": hook},
            json={"prompt": "x", "video_url": "data:video/mp4;base64,AAAA"},
        ).json()["request_id"]
        wait_until(
            lambda: any("webhook delivery" in m for m in messages(status(client, request_id))),
            60,
            "the webhook to give up",
        )
        assert len([d for d in receiver.deliveries if json.loads(d[1])["request_id"] == request_id]) == 3
        assert hidden.deliveries == []
    finally:
        hidden.close()


def test_a_pending_webhook_survives_a_restart(server_weights: Path, tmp_path: Path) -> None:
    hook = Receiver()
    try:

        def config() -> Settings:
            return Settings(
                weights_dir=server_weights,
                data_dir=tmp_path / "data",
                port=free_port(),
                webhook_allow=(f"127.0.0.1:{hook.port}",),
                webhook_attempts=4,
                webhook_backoff_s=2.0,
            )

        hook.plan = [503]
        with ThreadServer(config()) as first:
            submitted = httpx.post(
                f"{first.url}/queue/{POSE}",
                params={"fal_webhook": hook.url},
                json={"prompt": "x", "video_url": "data:video/mp4;base64,AAAA"},
            )
            request_id = submitted.json()["request_id"]
            wait_until(lambda: hook.for_job(request_id), 60, "the first delivery")
        assert len(hook.for_job(request_id)) == 1  # stopped during the back-off
        with ThreadServer(config()):
            wait_until(lambda: len(hook.for_job(request_id)) == 2, 30, "the delivery after the restart")
        assert json.loads(hook.for_job(request_id)[-1][1])["error"] == "Invalid status code: 422"
    finally:
        hook.close()
