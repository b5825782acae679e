"""The playground's mask painter in headless Chromium against a live ``vace serve`` (child process, loopback, tiny
weights with the tiny SAM2.1 tracker, an API key): a mask painted on the first frame of the uploaded video with the
mouse and with touch pointer events, the brush size, the eraser and Undo, uploaded as ``mask_image_url``, previewed,
and a small inpainting job run from the page whose result and tracked mask video both load.
``tests/js/playground_mask.mjs`` drives the browser; this module starts the server and checks what the page showed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_fixtures import ServeProcess, require, server_weights  # noqa: F401
from test_playground import CHROMIUM, JS_DIR

from weights.tiny.samples import write_sample

API_KEY = "mask-painter-key"


@pytest.fixture(scope="module")
def server(server_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    running = ServeProcess(server_weights, tmp_path_factory.mktemp("mask-painter") / "data", api_key=API_KEY).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def page_run(server: ServeProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require(
        CHROMIUM.exists(), f"no Chromium at {CHROMIUM} (make test installs it as root; else apt-get install chromium)"
    )
    assert shutil.which("node") and (JS_DIR / "node_modules" / "playwright-core").is_dir(), "run `npm ci` in tests/js"
    folder = tmp_path_factory.mktemp("mask-page")
    clip = write_sample("depth", folder / "clip.mp4", num_frames=17)
    screenshot = folder / "playground-mask.png"
    env = {**os.environ, "VACE_URL": server.url, "VACE_KEY": API_KEY, "CHROMIUM": str(CHROMIUM)}
    proc = subprocess.run(
        ["node", "playground_mask.mjs", str(clip), str(screenshot)],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1])
    assert "failure" not in report, f"{report['failure']}\nserver log:\n{server.output()[-3000:]}"
    assert report["pageErrors"] == [], report["pageErrors"]
    return report


def test_the_mask_is_painted_on_the_first_frame_with_brush_eraser_and_undo(page_run: dict[str, Any]) -> None:
    assert "choose the video first" in page_run["noVideoError"]
    assert "touch" in page_run["pointerTypes"] and "mouse" in page_run["pointerTypes"]
    assert page_run["frame"]["size"] == [416, 240] and page_run["frame"]["time"] == 0
    assert page_run["beforeUndo"]["at"]["undone"]  # the mistaken stroke was there...
    painted = page_run["painted"]
    assert painted["size"] == [416, 240]  # the video's own pixels: the mask has the video's shape
    probes = painted["at"]
    assert probes["stroke"] and probes["touch"] and probes["wide"]  # mouse, finger, the wider brush
    assert not probes["erased"] and not probes["undone"] and not probes["outside"]  # eraser, undo, elsewhere
    assert painted["total"] < page_run["beforeUndo"]["total"]
    assert f"{100 * painted['total'] / (416 * 240):.1f}% of the first frame painted" in page_run["status"]


def test_the_painted_mask_is_uploaded_previewed_and_tracked_by_the_job(page_run: dict[str, Any]) -> None:
    assert "/files/" in page_run["maskUrl"]
    uploaded = page_run["preview"]["uploaded"]
    assert uploaded["size"] == [416, 240] and uploaded["values"] == [0, 255]  # black and white, as painted
    assert uploaded["white"] == page_run["painted"]["total"]
    preview = page_run["preview"]
    assert "of frame 0 generated (red)" in preview["caption"]
    assert any(note.startswith("inpainting: mask mode track") for note in preview["notes"])
    assert preview["redAtStroke"] and not preview["redOutside"]

    assert page_run["resultSize"] == [416, 240] and page_run["maskVideoSize"] == [416, 240]
    assert page_run["maskFigureShown"] and page_run["formError"] == ""
    output = page_run["output"]
    assert output["mask_video"]["num_frames"] == output["video"]["num_frames"] == 17
    assert page_run["maskDownload"] == output["mask_video"]["url"]
    assert "mask tracking: sam2.1-hiera-small followed the first frame's mask through 17 frames" in page_run["log"]
