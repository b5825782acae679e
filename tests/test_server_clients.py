"""The unmodified fal clients against a live ``vace serve --tls`` (child process, loopback, tiny weights, API key).

fal-client (Python) runs in a fresh process with exactly the environment lines the server printed; it covers
subscribe, submit/status/result, cancel, run and upload_file (through ``server.falclient.use_server``) on both apps
and both tasks, and then every other endpoint of the VACE family on both apps (the base endpoint without a video,
inpainting with an uploaded mask video, outpainting, reframe of a letterboxed clip), and long-reframe of a clip of three
scenes. The server runs windows of 17 frames (``--window-frames``), so the long reframe's scenes are windows too.
@fal-ai/client (JS, from npm) uploads and subscribes through a ``requestMiddleware``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from scene_clips import write_three_scenes
from server_fixtures import REPO, ServeProcess, control_videos, require, server_weights  # noqa: F401

from pipelines.audio import audio_codec
from weights.tiny.samples import write_sample

API_KEY = "client-test-key"
JS_DIR = REPO / "tests" / "js"


@pytest.fixture(scope="module")
def tls_server(server_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = ServeProcess(
        server_weights,
        tmp_path_factory.mktemp("tls") / "data",
        tls=True,
        api_key=API_KEY,
        extra_args=["--window-frames", "17", "--window-overlap", "5"],
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fal_env(tls_server: ServeProcess) -> dict[str, str]:
    """The ``export NAME=value`` lines ``vace serve --tls`` printed, with our key for the placeholder."""
    printed = dict(
        re.findall(
            r"^  export (FAL_RUN_HOST|FAL_QUEUE_RUN_HOST|SSL_CERT_FILE|FAL_KEY)=(\S+)", tls_server.output(), re.M
        )
    )
    assert set(printed) == {"FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "SSL_CERT_FILE", "FAL_KEY"}, tls_server.output()
    return {**printed, "FAL_KEY": API_KEY}


def _video_files(server: ServeProcess) -> list[Path]:
    return sorted((server.data_dir / "files").glob("*/video.mp4"))


@pytest.fixture(scope="module")
def fal_results(
    tls_server: ServeProcess,
    fal_env: dict[str, str],
    control_videos: dict[str, Path],
) -> dict[str, Any]:
    videos_before = len(_video_files(tls_server))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "fal_client_driver.py"),
            str(control_videos["pose"]),
            str(control_videos["depth"]),
            tls_server.url,
        ],
        env={**env, **fal_env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n--- server ---\n{tls_server.output()[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    results["new_stored_videos"] = len(_video_files(tls_server)) - videos_before
    return results


def fetch(server: ServeProcess, url: str) -> bytes:
    response = httpx.get(url, verify=server.verify)
    assert response.status_code == 200
    return response.content


def check_video(output: dict[str, Any], prompt: str) -> None:
    assert output["prompt"] == prompt and output["seed"] == 3
    video = output["video"]
    assert (video["width"], video["height"], video["num_frames"], video["fps"]) == (416, 240, 17, 16)


def test_printed_environment(tls_server: ServeProcess, fal_env: dict[str, str]) -> None:
    assert fal_env["FAL_RUN_HOST"] == f"127.0.0.1:{tls_server.port}"
    assert fal_env["FAL_QUEUE_RUN_HOST"] == f"127.0.0.1:{tls_server.port}/queue"
    assert Path(fal_env["SSL_CERT_FILE"]) == tls_server.cert


def test_subscribe_reports_queue_updates_with_logs(tls_server: ServeProcess, fal_results: dict[str, Any]) -> None:
    output = fal_results["subscribe"]
    check_video(output, "a dancer")
    assert output["video"]["url"].startswith(f"{tls_server.url}/files/")
    assert fetch(tls_server, output["video"]["url"])[4:8] == b"ftyp"
    updates = fal_results["subscribe_updates"]
    assert updates[-1]["type"] == "Completed" and updates[-1]["metrics"]["inference_time"] > 0
    logs = updates[-1]["logs"]
    for line in ("fetching inputs", "step 1/2", "step 2/2"):
        assert line in logs
    assert any(line.startswith("encoding") for line in logs)
    assert any(u["type"] == "InProgress" and u["logs"] for u in updates)


def test_submit_status_result_and_cancel(tls_server: ServeProcess, fal_results: dict[str, Any]) -> None:
    statuses = fal_results["submit_statuses"]
    assert {s["type"] for s in statuses} <= {"Queued", "InProgress", "Completed"}
    assert "step 2/2" in statuses[-1]["logs"] and statuses[-1]["error_type"] is None
    check_video(fal_results["submit_result"], "a ball")
    assert fetch(tls_server, fal_results["submit_result"]["video"]["url"])[4:8] == b"ftyp"
    assert fal_results["doomed_before"]["type"] == "Queued" and fal_results["doomed_before"]["position"] >= 0
    after = fal_results["doomed_after"]
    assert after["type"] == "Completed" and after["error_type"] == "client_cancelled"
    assert not any(line.startswith("started") for line in after["logs"])  # it never ran
    assert fal_results["doomed_result"] == {
        "status_code": 499,
        "message": "Request was cancelled",
        "error_type": "client_cancelled",
    }


def test_run_with_sync_mode_returns_data_uris_and_keeps_nothing(fal_results: dict[str, Any]) -> None:
    output = fal_results["run"]
    check_video(output, "sync")
    header, _, payload = output["video"]["url"].partition(",")
    assert header == "data:video/mp4;base64" and base64.b64decode(payload)[4:8] == b"ftyp"
    # subscribe, submit and the upload-fed subscribe stored a video each; the sync_mode run stored none.
    assert fal_results["new_stored_videos"] == 3


def test_validation_error_through_the_client(fal_results: dict[str, Any]) -> None:
    error = fal_results["run_invalid"]
    assert error["status_code"] == 422
    assert [(d["loc"], d["type"]) for d in error["message"]] == [(["body", "num_frames"], "greater_than_equal")]


def test_upload_file_feeds_a_later_request(
    tls_server: ServeProcess, fal_results: dict[str, Any], control_videos: dict[str, Path]
) -> None:
    uploaded = fal_results["uploaded"]
    assert uploaded.startswith(f"{tls_server.url}/files/") and uploaded.endswith("/pose.mp4")
    assert fetch(tls_server, uploaded) == control_videos["pose"].read_bytes()
    check_video(fal_results["upload_subscribe"], "from upload")


def test_wrong_key_is_refused(tls_server: ServeProcess) -> None:
    with tls_server.client() as c:
        c.headers["authorization"] = "Key nope"
        response = c.post("/queue/fal-ai/wan-vace-14b/pose", json={"prompt": "x", "video_url": "https://e/v.mp4"})
        assert response.status_code == 401 and "API key" in response.json()["detail"]
        del c.headers["authorization"]
        assert c.get("/health").status_code == 200


def test_js_client_subscribe(tls_server: ServeProcess, control_videos: dict[str, Path]) -> None:
    require(
        shutil.which("node") is not None and (JS_DIR / "node_modules" / "@fal-ai" / "client").is_dir(),
        "needs Node and `npm ci` in tests/js (make install does it)",
    )
    env = {**os.environ, "VACE_URL": tls_server.url, "FAL_KEY": API_KEY, "NODE_EXTRA_CA_CERTS": str(tls_server.cert)}
    proc = subprocess.run(
        ["node", "subscribe.mjs", "fal-ai/wan-vace-14b/pose", str(control_videos["pose"])],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n--- server ---\n{tls_server.output()[-3000:]}"
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["videoUrl"].startswith(f"{tls_server.url}/files/")
    assert fetch(tls_server, seen["videoUrl"]) == control_videos["pose"].read_bytes()
    data = seen["data"]
    assert seen["requestId"] and data["prompt"] == "a person dancing" and data["seed"] == 7
    assert fetch(tls_server, data["video"]["url"])[4:8] == b"ftyp"
    statuses = [u["status"] for u in seen["updates"]]
    assert statuses[-1] == "COMPLETED" and "step 2/2" in seen["updates"][-1]["logs"]


@pytest.fixture(scope="module")
def family_results(
    tls_server: ServeProcess,
    fal_env: dict[str, str],
    control_videos: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("family")
    media = [str(control_videos["depth"])] + [
        str(write_sample(kind, folder / f"{kind}.mp4", num_frames=17)) for kind in ("mask", "letterbox")
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fal_client_driver.py"), "family", tls_server.url, *media],
        env={**env, **fal_env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n--- server ---\n{tls_server.output()[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("app", ["fal-ai/wan-vace-14b", "fal-ai/wan-22-vace-fun-a14b"])
def test_every_family_endpoint_through_fal_client(
    tls_server: ServeProcess, family_results: dict[str, Any], app: str
) -> None:
    """Each endpoint's output has the geometry its task implies, a video the server serves, and the job log its
    decisions: text-to-video at 240p; inpainting at the source's size, the mask followed frame by frame;
    outpainting left and right by a quarter (624x240 scaled into the 240p tier, rounded up to 16: 512x208);
    reframe to 1:1 with the bars trimmed (fal's match_input_* defaults: the clip's own 17 frames at 16 fps)."""
    expected = {"base": (416, 240), "inpainting": (416, 240), "outpainting": (512, 208), "reframe": (320, 320)}
    for endpoint, (width, height) in expected.items():
        output = family_results[f"{app} {endpoint}"]
        video = output["video"]
        assert (video["width"], video["height"], video["num_frames"], video["fps"]) == (width, height, 17, 16), endpoint
        assert output["seed"] == 3 and video["url"].startswith(f"{tls_server.url}/files/")
        assert fetch(tls_server, video["url"])[4:8] == b"ftyp"
    assert family_results[f"{app} reframe"]["prompt"] == ""
    logs = {name: family_results[f"{app} {name} logs"] for name in ("base", "inpainting", "reframe")}
    assert "no video_url: text-to-video" in logs["base"] and "step 2/2" in logs["base"]
    assert any(line.startswith("inpainting: mask mode per frame") for line in logs["inpainting"])
    assert "reframe: bars trimmed (top 30, bottom 30, left 0, right 0 px)" in logs["reframe"]
    placed = "reframe: zoom 0; the source (320x138) is placed at (0, 91)"
    assert any(line.startswith(placed) for line in logs["reframe"])


def test_long_reframe_through_fal_client(
    tls_server: ServeProcess, fal_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """fal's long-reframe app through subscribe: a clip of three scenes (60 frames at 16 fps, with sound) comes back
    as fal's output (the video alone) with the clip's 60 frames and its sound, each scene reframed (in two windows
    of 17 frames: the status lines count the job's six) and the log naming the scenes."""
    clip = write_three_scenes(tmp_path_factory.mktemp("long") / "scenes.mp4")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fal_client_driver.py"), "long", tls_server.url, str(clip)],
        env={**env, **fal_env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n--- server ---\n{tls_server.output()[-3000:]}"
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    output, logs = seen["output"], seen["logs"]
    assert set(output) == {"video"}
    video = output["video"]
    assert (video["width"], video["height"], video["num_frames"], video["fps"]) == (320, 320, 60, 16)
    body = fetch(tls_server, video["url"])
    downloaded = tmp_path_factory.mktemp("long-out") / "out.mp4"
    downloaded.write_bytes(body)
    assert audio_codec(downloaded) == "aac"
    assert any(line.startswith("3 scenes found (scene_threshold 30)") for line in logs)
    assert [line for line in logs if line.startswith("window ")] == [f"window {i}/6" for i in range(1, 7)]
