"""The VACE family's endpoints on a live server (in-process uvicorn, real HTTP on loopback, tiny weights): each
endpoint's ``/openapi.json`` body schema against fal's reference file, ``/ready`` and the 404 listings, and every
bad request refused with fal's 422 naming its field: at submission (what needs no download) and from the job (bad
mask videos and images, which are read by the worker) on the sync route, the queue and a webhook alike; and the
playground's preview of a job's conditioning. No job here reaches the model: each fails on its input first, which is
what makes the module cheap.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fal_reference import REFERENCE, compare, load_reference, negative_prompt_default
from PIL import Image
from server_fixtures import Receiver, ThreadServer, free_port, keyed_client, require, server_weights, wait_until  # noqa: F401
from test_schema_family import ALLOWED, extensions

from pipelines.encode import encode_video
from pipelines.registry import ENDPOINT_IDS
from server.config import Settings
from weights.tiny.samples import SAMPLES

API_KEY = "family-key"
SMALL = {"num_frames": 17, "num_inference_steps": 2, "acceleration": "none", "seed": 1}
INPAINT_14B, INPAINT_FUN = "/fal-ai/wan-vace-14b/inpainting", "/fal-ai/wan-22-vace-fun-a14b/inpainting"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hooks = Receiver()
    yield hooks
    hooks.close()


@pytest.fixture(scope="module")
def server(
    server_weights: Path, tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[ThreadServer]:
    config = Settings(
        weights_dir=server_weights,
        data_dir=tmp_path_factory.mktemp("family-data"),
        port=free_port(),
        api_keys=frozenset({API_KEY}),
        webhook_allow=(f"127.0.0.1:{receiver.port}",),
        webhook_attempts=1,
    )
    with ThreadServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[httpx.Client]:
    with keyed_client(server.url, API_KEY) as c:
        yield c


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def video_uri(frames: list[np.ndarray], path: Path) -> str:
    encode_video(frames, path, 16.0, quality="maximum")
    return data_uri(path.read_bytes(), "video/mp4")


def png_uri(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return data_uri(buffer.getvalue(), "image/png")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A 33-frame 416x240 source video and mask videos/images as data URIs, good and bad."""
    folder = tmp_path_factory.mktemp("family-media")
    black = [np.zeros((240, 416, 3), np.uint8)] * 33
    return {
        "video": video_uri(SAMPLES["depth"](416, 240, 33, 16), folder / "video.mp4"),
        "mask": video_uri(SAMPLES["mask"](416, 240, 33, 16), folder / "mask.mp4"),
        "short_mask": video_uri(SAMPLES["mask"](416, 240, 9, 16), folder / "short.mp4"),
        "square_mask": video_uri(SAMPLES["mask"](320, 320, 33, 16), folder / "square.mp4"),
        "black_mask": video_uri(black, folder / "black.mp4"),
        "white_image": png_uri(np.full((240, 416), 255, np.uint8)),
        "black_image": png_uri(np.zeros((240, 416), np.uint8)),
        "square_image": png_uri(np.full((320, 320), 255, np.uint8)),
        "huge_image": png_uri(np.zeros((8192, 8200), np.uint8)),  # over the 8192x8192-pixel image limit
        "not_an_image": data_uri(bytes(range(256)) * 64, "image/png"),
        "not_a_video": data_uri(bytes(range(256)) * 64, "video/mp4"),
    }


def detail(response: httpx.Response) -> list[tuple[list[Any], str]]:
    assert response.status_code == 422, response.text
    return [(d["loc"], d["type"]) for d in response.json()["detail"]]


@pytest.mark.parametrize("endpoint", ENDPOINT_IDS)
def test_each_endpoints_openapi_body_matches_fals_schema(client: httpx.Client, endpoint: str) -> None:
    """The served ``/openapi.json`` documents each endpoint (sync and queue route) with its own request model, and
    that model is fal's field for field (the comparator of ``tests/test_schema_family.py``)."""
    require(REFERENCE.is_file(), f"fal's schema reference is not at {REFERENCE}")
    spec = client.get("/openapi.json").json()
    rows = load_reference().get(endpoint) or load_reference()["fal-ai/wan-vace-14b"]  # base on the Fun app too
    bodies = []
    for path in (f"/{endpoint}", f"/queue/{endpoint}"):
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        bodies.append(ref)
        schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
        problems = compare(endpoint, schema, rows, negative_prompt_default(REFERENCE.read_text()), ALLOWED)
        assert not problems, "\n".join(problems)
        extra = set(schema["properties"]) - set(rows) - extensions(rows)
        assert not extra, f"{endpoint}: fields fal does not have: {sorted(extra)}"
    assert bodies[0] == bodies[1]


def test_ready_metrics_and_unknown_endpoints_list_every_endpoint(client: httpx.Client) -> None:
    tracking = client.get("/ready").json()["mask_tracking"]  # the server's, with a key
    assert tracking == {
        "mode": "track",
        "tracker": "sam2.1-hiera-small",
        "weights_present": True,
        "expand_ratio": 0.25,
        "threshold": 0.5,
    }
    ready = client.get("/ready").json()["endpoints"]
    for app in ("fal-ai/wan-vace-14b", "fal-ai/wan-22-vace-fun-a14b"):
        assert ready[app]["tasks"] == ["pose", "depth", "inpainting", "outpainting", "reframe"]
        assert ready[app]["endpoints"] == [app] + [f"{app}/{t}" for t in ready[app]["tasks"]]
    assert sorted(e for app in ready.values() for e in app["endpoints"]) == sorted(ENDPOINT_IDS)
    metrics = client.get("/metrics").text
    assert 'vace_queue_depth_by_endpoint{app="fal-ai/wan-vace-14b",priority="normal",task="reframe"} 0.0' in metrics
    assert 'vace_queue_depth_by_endpoint{app="fal-ai/wan-22-vace-fun-a14b",priority="normal",task=""} 0.0' in metrics
    missing = client.post("/fal-ai/wan-vace-14b/canny", json={"prompt": "x"})
    assert missing.status_code == 404 and "fal-ai/wan-22-vace-fun-a14b/outpainting" in missing.json()["detail"]
    status = client.get("/queue/fal-ai/wan-vace-14b/canny/requests/x/status")
    assert status.status_code == 404 and "fal-ai/wan-vace-14b/reframe" in status.json()["detail"]


@pytest.mark.parametrize("path,body,loc,type_", [
    # the base endpoint: a task that needs a video, a mask without one, inpainting without a mask
    ("/fal-ai/wan-vace-14b", {"task": "outpainting"}, ["body", "video_url"], "missing_video"),
    ("/fal-ai/wan-22-vace-fun-a14b", {"task": "pose", "video_url": ""}, ["body", "video_url"], "missing_video"),
    ("/fal-ai/wan-vace-14b", {"mask_image_url": "https://e/m.png"}, ["body", "mask_image_url"], "missing_video"),
    ("/fal-ai/wan-vace-14b", {"task": "inpainting", "video_url": "https://e/v.mp4"}, ["body", "mask_video_url"],
     "missing_mask"),
    ("/fal-ai/wan-vace-14b", {"task": "canny"}, ["body", "task"], "literal_error"),
    # inpainting: the 14B schema requires the key (null allowed), neither app runs without a mask
    (INPAINT_14B, {"video_url": "https://e/v.mp4"}, ["body", "mask_video_url"], "missing"),
    (INPAINT_14B, {"video_url": "https://e/v.mp4", "mask_video_url": None}, ["body", "mask_video_url"],
     "missing_mask"),
    (INPAINT_FUN, {"video_url": "https://e/v.mp4"}, ["body", "mask_video_url"], "missing_mask"),
    (INPAINT_FUN, {"video_url": "https://e/v.mp4", "mask_video_url": "/etc/passwd"}, ["body", "mask_video_url"],
     "file_download_error"),
    # outpainting: fal's defaults choose no side
    ("/fal-ai/wan-vace-14b/outpainting", {"video_url": "https://e/v.mp4"}, ["body", "expand_left"],
     "nothing_to_expand"),
    ("/fal-ai/wan-vace-14b/outpainting", {"video_url": "https://e/v.mp4", "expand_ratio": 1.5},
     ["body", "expand_ratio"], "less_than_equal"),
    # reframe: zoom stops at 0.9
    ("/fal-ai/wan-22-vace-fun-a14b/reframe", {"video_url": "https://e/v.mp4", "zoom_factor": 0.95},
     ["body", "zoom_factor"], "less_than_equal"),
])  # fmt: skip
def test_requests_that_cannot_run_are_refused_at_submission(
    client: httpx.Client, path: str, body: dict, loc: list, type_: str
) -> None:
    body = {"prompt": "a ball", **body}
    for route in (path, f"/queue{path}"):
        got = detail(client.post(route, json=body))
        assert got[0] == (loc, type_), got


@pytest.mark.parametrize("endpoint,field,mask,type_,words", [
    (INPAINT_14B, "mask_video_url", "short_mask", "mask_too_short", "the mask video has 9 frames"),
    (INPAINT_FUN, "mask_video_url", "square_mask", "mask_aspect_mismatch", "the mask is 320x320"),
    (INPAINT_14B, "mask_video_url", "not_a_video", "video_decode_error", "not a decodable video"),
    (INPAINT_FUN, "mask_video_url", "black_mask", "mask_empty", "black everywhere"),
    (INPAINT_14B, "mask_image_url", "white_image", "mask_full", "white everywhere"),
    (INPAINT_FUN, "mask_image_url", "black_image", "mask_empty", "black everywhere"),
    (INPAINT_14B, "mask_image_url", "square_image", "mask_aspect_mismatch", "the mask is 320x320"),
    (INPAINT_FUN, "mask_image_url", "huge_image", "image_too_large", "8200x8192, over the 67108864-pixel limit"),
    (INPAINT_14B, "mask_image_url", "not_an_image", "image_load_error", "not a readable image"),
])  # fmt: skip
def test_bad_masks_fail_the_job_with_a_422_naming_the_field(
    client: httpx.Client, media: dict[str, str], endpoint: str, field: str, mask: str, type_: str, words: str
) -> None:
    body = {"prompt": "a ball", "video_url": media["video"], "mask_video_url": None, field: media[mask], **SMALL}
    response = client.post(endpoint, json=body)
    assert detail(response) == [(["body", field], type_)]
    assert words in response.json()["detail"][0]["msg"]


def test_a_queued_bad_mask_fails_with_its_422_through_status_result_and_webhook(
    client: httpx.Client, media: dict[str, str], receiver: Receiver
) -> None:
    """The base endpoint's inpainting (the image wins over the video there): the job is queued, then fails on the
    mask image; its status, result and webhook carry the 422 naming ``mask_image_url``, and the log says why."""
    body = {
        "prompt": "a ball",
        "task": "inpainting",
        "video_url": media["video"],
        "mask_video_url": media["mask"],
        "mask_image_url": media["white_image"],
        **SMALL,
    }
    submitted = client.post("/queue/fal-ai/wan-vace-14b", params={"fal_webhook": receiver.url}, json=body).json()
    status = wait_until(
        lambda: (s := client.get(submitted["status_url"], params={"logs": 1}).json())["status"] == "COMPLETED" and s,
        120,
        "the job to fail",
    )
    assert status["error_type"] == "mask_full"
    logs = [line["message"] for line in status["logs"]]
    assert "both masks given: mask_video_url is ignored, as fal documents for this endpoint" in logs
    result = client.get(submitted["response_url"])
    assert detail(result) == [(["body", "mask_image_url"], "mask_full")]
    hook = wait_until(lambda: receiver.for_job(submitted["request_id"]), 60, "the webhook")
    delivered = json.loads(hook[0][1])
    assert delivered["status"] == "ERROR" and delivered["payload"]["detail"][0]["loc"] == ["body", "mask_image_url"]


def png(uri: str) -> np.ndarray:
    header, _, payload = uri.partition(",")
    assert header == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))))


def test_the_playground_preview_runs_the_jobs_own_steps(
    server: ThreadServer, client: httpx.Client, media: dict[str, str]
) -> None:
    """``/playground/preview``: the output size, the notes and the middle frame with its mask, as the job would
    build them (no prompt needed), or for a mask image the server tracks the first frame's; a mask the job would
    refuse is the same 422; a key is needed."""
    body = {"video_url": media["video"], "mask_video_url": media["mask"], "num_frames": 17}
    got = client.post("/playground/preview", params={"endpoint": "fal-ai/wan-vace-14b/inpainting"}, json=body).json()
    assert (got["recipe"], got["width"], got["height"], got["generated_frames"], got["frame_index"]) == (
        "inpainting",
        416,
        240,
        17,
        8,
    )
    assert any(note.startswith("inpainting: mask mode per frame") for note in got["notes"])
    drawn = SAMPLES["mask"](416, 240, 33, 16)[8][..., 0] >= 128  # frame 8 of the clip at 16 fps
    mask = png(got["mask"]) == 255
    assert np.mean(mask == drawn) > 0.99 and got["generated_share"] == pytest.approx(mask.mean())
    assert png(got["frame"]).shape == (240, 416, 3)

    grown = client.post(
        "/playground/preview",
        params={"endpoint": "fal-ai/wan-22-vace-fun-a14b/outpainting"},
        json={"video_url": media["video"], "expand_top": True, "resolution": "240p"},
    ).json()
    assert any("is placed at" in note for note in grown["notes"])
    canvas = png(grown["mask"])
    assert (canvas[: grown["height"] // 8] == 255).all() and (canvas[-1] == 0).any()  # the top border is generated

    box = np.zeros((240, 416), np.uint8)
    box[60:180, 100:300] = 255
    tracked = client.post(
        "/playground/preview",
        params={"endpoint": "fal-ai/wan-22-vace-fun-a14b/inpainting"},
        json={"video_url": media["video"], "mask_image_url": png_uri(box)},
    ).json()
    assert tracked["frame_index"] == 0 and any(
        note.startswith("inpainting: mask mode track") for note in tracked["notes"]
    )
    ys, xs = np.nonzero(png(tracked["mask"]) == 255)  # the box grown as the job grows it: 50 px wider, 30 taller
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (50, 349, 30, 209)
    bad = client.post(
        "/playground/preview",
        params={"endpoint": "fal-ai/wan-22-vace-fun-a14b/inpainting"},
        json={"video_url": media["video"], "mask_video_url": media["black_mask"]},
    )
    assert detail(bad) == [(["body", "mask_video_url"], "mask_empty")]
    text = client.post("/playground/preview", params={"endpoint": "fal-ai/wan-vace-14b"}, json={}).json()
    assert (text["recipe"], text["width"], text["height"]) == ("text", 832, 480) and "frame" not in text
    assert client.post("/playground/preview", params={"endpoint": "fal-ai/x"}, json={}).status_code == 404
    assert (
        httpx.post(f"{server.url}/playground/preview", params={"endpoint": "fal-ai/wan-vace-14b"}, json={}).status_code
        == 401
    )
