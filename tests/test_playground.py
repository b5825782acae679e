"""The playground page (``GET /``) end to end in headless Chromium against a live ``vace serve`` (child process,
loopback, tiny weights, an API key): the key field, an upload through the upload API, an out-of-range field with the
server's message next to it, and a small preprocessed job whose progress reaches 100%, whose live preview beside the
progress bar changes with the steps, and whose control and result videos load in the page. ``tests/js/playground.mjs``
drives the browser (playwright-core from npm, Debian's chromium); this module starts the server and checks what the
page showed.

All of it runs twice: with the server's files in its data directory and in an S3 bucket (moto's server), where the
page's upload and the JS snippet's @fal-ai/client upload land in the bucket, the job reads its input from there, and
the page plays the videos from presigned URLs of the bucket.

Set ``VACE_PLAYGROUND_SCREENSHOT=docs/playground.png`` to refresh the README's screenshot from a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from s3_fixtures import FILE_STORES, files_setting, s3_server, stored_names  # noqa: F401
from server_fixtures import REPO, ServeProcess, control_videos, require, server_weights  # noqa: F401

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
JS_DIR = REPO / "tests" / "js"
API_KEY = "playground-test-key"
STATIC = REPO / "server" / "static"
FAL_HOSTS = ("https://queue.fal.run", "https://rest.fal.ai", "https://fal.run")


@pytest.fixture(scope="module", params=FILE_STORES)
def server(
    request: pytest.FixtureRequest, server_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    running = ServeProcess(
        server_weights,
        tmp_path_factory.mktemp("playground") / "data",
        api_key=API_KEY,
        files=files_setting(request.param, request),
    ).start()
    yield running
    running.stop()


def output_prefix(server: ServeProcess) -> str:
    """How the URL of a file a job made starts: the server's ``/files/``, or the bucket's (presigned)."""
    return f"{os.environ['AWS_ENDPOINT_URL']}/" if server.files else f"{server.url}/files/"


@pytest.fixture(scope="module")
def page_run(
    server: ServeProcess, control_videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One browser session through the page; returns the JSON report ``playground.mjs`` prints."""
    require(
        CHROMIUM.exists(), f"no Chromium at {CHROMIUM} (make test installs it as root; else apt-get install chromium)"
    )
    assert shutil.which("node"), "Node.js is needed to drive the browser"
    assert (JS_DIR / "node_modules" / "playwright-core").is_dir(), "run `npm ci` in tests/js (make test does)"
    screenshot = tmp_path_factory.mktemp("screens") / "playground.png"
    env = {**os.environ, "VACE_URL": server.url, "VACE_KEY": API_KEY, "CHROMIUM": str(CHROMIUM)}
    proc = subprocess.run(
        ["node", "playground.mjs", str(control_videos["pose"]), str(screenshot)],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1])
    assert "failure" not in report, f"{report['failure']}\nserver log:\n{server.output()[-3000:]}"
    assert screenshot.is_file()
    if target := os.environ.get("VACE_PLAYGROUND_SCREENSHOT"):
        shutil.copyfile(screenshot, target)
    return report


def test_page_is_local_and_built_from_the_schema(page_run: dict[str, Any], server: ServeProcess) -> None:
    assert page_run["pageErrors"] == []
    # Requests to other hosts: only the videos, from the bucket's presigned URLs when the files are in S3.
    foreign = page_run["foreignRequests"]
    assert all(url.startswith(output_prefix(server)) and "X-Amz-Signature=" in url for url in foreign), foreign
    assert bool(foreign) == bool(server.files)
    assert page_run["apps"] == ["fal-ai/wan-vace-14b", "fal-ai/wan-22-vace-fun-a14b", "fal-ai/wan-vace-apps"]
    assert page_run["formDefaults"] == {
        "num_frames": "81",
        "num_frames_max": "241",
        "sampler": "unipc",
        "sampler_options": ["unipc", "dpm++", "euler"],
        "preprocess": False,
    }


def test_api_key_field_and_upload(page_run: dict[str, Any], server: ServeProcess) -> None:
    assert page_run["keyFieldVisible"]
    assert "API key" in page_run["missingKeyError"]
    assert "/files/" in page_run["videoUrl"] and page_run["uploadStatus"].startswith("uploaded")
    assert page_run["videoUrl"].rpartition("/")[2] in stored_names(server.files, server.data_dir)  # disk or bucket
    assert page_run["keyErrorAfterUpload"] == ""


def test_out_of_range_field_shows_the_server_message(page_run: dict[str, Any]) -> None:
    assert "less than or equal to 241" in page_run["rangeError"] and "less_than_equal" in page_run["rangeError"]
    assert page_run["rangeFieldInvalid"] and page_run["rangeErrorAfterFix"] == ""


def test_job_progress_and_videos(page_run: dict[str, Any], server: ServeProcess) -> None:
    seen = page_run["progressSeen"]
    assert 50 in seen and seen[-1] == 100 and seen.index(50) < seen.index(100), seen
    assert page_run["progress"] == 100 and page_run["progressText"].startswith("done in")
    assert all(f"step {i}/4" in page_run["log"] for i in range(1, 5))
    assert page_run["resultReadyState"] >= 1 and page_run["resultSize"] == [416, 240]
    assert page_run["controlVisible"] and page_run["controlReadyState"] >= 1
    assert page_run["decoded"][0] >= 2 and page_run["decoded"][1] >= 2  # a frame of each decoded in the page
    assert page_run["seed"] == "1" and page_run["resultDownload"] == page_run["resultSrc"]
    assert urlsplit(page_run["resultDownload"]).path.endswith("/video.mp4")
    assert page_run["formError"] == ""

    # What the page showed is what the server has: the control video is an extra status field, and the output
    # keeps fal's schema.
    with server.client() as client:
        base = f"/queue/fal-ai/wan-vace-14b/requests/{page_run['requestId']}"
        status = client.get(f"{base}/status").json()
        output = client.get(base).json()
        assert status["control_video_url"] == page_run["controlSrc"]
    control = httpx.get(status["control_video_url"], timeout=30)  # no key: the URL is the grant
    assert control.status_code == 200 and control.headers["content-type"] == "video/mp4"
    assert output["video"]["url"] == page_run["resultSrc"] and output["seed"] == 1
    assert page_run["resultSrc"].startswith(output_prefix(server))
    assert page_run["controlSrc"].startswith(output_prefix(server))
    assert set(output) <= {"video", "prompt", "seed", "frames_zip"}


def test_live_preview_changes_while_the_job_denoises(page_run: dict[str, Any]) -> None:
    """The preview element beside the progress bar showed at least two previews of later and later steps, each
    decoded at latent resolution upscaled (a 416x240 job: 52x30 latents, 6x), while the job was still running."""
    previews = page_run["previewsSeen"]
    steps = [p["step"] for p in previews]
    assert len(set(steps)) >= 2 and steps == sorted(steps) and set(steps) <= {1, 2, 3, 4}, previews
    assert all(p["shown"] and p["running"] and (p["width"], p["height"]) == (312, 180) for p in previews[:2])


def test_snippets_carry_the_exact_request(page_run: dict[str, Any], server: ServeProcess) -> None:
    snippets = page_run["snippets"]
    sent = {
        "prompt": "a dancer on a beach at sunset",
        "video_url": page_run["videoUrl"],
        "num_frames": 17,
        "num_inference_steps": 4,
        "seed": 1,
        "preprocess": True,
        "acceleration": "none",
        "loras": [{"path": "tiny-wan21", "scale": 0.5}],
    }  # the LoRA list: "name:scale" lines
    curl = snippets["curl"]
    body = json.loads(curl[curl.index("-d '") + 4 : curl.index("'\n#")])
    assert body == sent
    assert f"{server.url}/queue/fal-ai/wan-vace-14b/pose" in curl and "Authorization: Key $FAL_KEY" in curl
    python = snippets["python"]
    assert f'use_server("{server.url}")' in python and '"fal-ai/wan-vace-14b/pose"' in python
    assert '"preprocess": True' in python and '"num_frames": 17' in python
    js = snippets["js"]
    assert "requestMiddleware" in js and 'fal.subscribe("fal-ai/wan-vace-14b/pose"' in js
    assert '"preprocess": true' in js


def test_js_snippet_runs_as_printed(page_run: dict[str, Any], server: ServeProcess, tmp_path: Path) -> None:
    """The JavaScript snippet, exactly as the page shows it, run with Node and @fal-ai/client against the server:
    its requestMiddleware sends every fal host (queue, run and rest.fal.ai's storage) to the server. One line is
    appended, an upload through ``fal.storage.upload``, which goes by way of rest.fal.ai."""
    script = JS_DIR / f"snippet-{tmp_path.name}.mjs"  # beside node_modules, so the import resolves
    script.write_text(page_run["snippets"]["js"] + "\nconsole.log(await fal.storage.upload(new Blob(['x'])));\n")
    try:
        proc = subprocess.run(
            ["node", script.name],
            cwd=JS_DIR,
            env={**os.environ, "FAL_KEY": API_KEY},
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        script.unlink()
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    video_line, upload_line = proc.stdout.strip().splitlines()[-2:]
    video_url, seed = video_line.split()
    assert video_url.startswith(output_prefix(server)) and seed == "1"
    assert httpx.get(video_url, timeout=30).content[4:8] == b"ftyp"
    assert upload_line.startswith(f"{server.url}/files/")
    assert httpx.get(upload_line, follow_redirects=True, timeout=30).content == b"x"


def test_page_files_are_served(server: ServeProcess) -> None:
    """Every file under server/static is reachable, and the page names no other host."""
    with httpx.Client(base_url=server.url) as client:  # the page and its files need no key
        index = client.get("/")
        assert index.status_code == 200 and "default-src 'self'" in index.headers["content-security-policy"]
        for path in STATIC.iterdir():
            assert client.get(f"/static/{path.name}").status_code == 200
        assert client.get("/playground/config").json() == {"auth_required": True}
    for path in STATIC.iterdir():  # absolute URLs only in the JS snippet's host rewriting
        assert set(re.findall(r"https?://[^\s\"'`]*", path.read_text())) <= set(FAL_HOSTS), path
