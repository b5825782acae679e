"""The playground's VACE-family fields in headless Chromium against a live ``vace serve`` (child process, loopback,
tiny weights, an API key): each endpoint's own form, a mask upload with its overlay preview and a black mask refused
next to its field before anything runs, outpainting sides with the canvas preview of where the source lands, the
trim and zoom preview of a letterboxed reframe, one reframe job run from the page, and the base endpoint's form.
``tests/js/playground_family.mjs`` drives the browser; this module starts the server and checks what the page showed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_fixtures import ServeProcess, require, server_weights  # noqa: F401
from test_playground import CHROMIUM, JS_DIR

from pipelines.encode import encode_video
from weights.tiny.samples import write_sample

API_KEY = "family-playground-key"


@pytest.fixture(scope="module")
def server(server_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    running = ServeProcess(
        server_weights, tmp_path_factory.mktemp("family-playground") / "data", api_key=API_KEY
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def page_run(server: ServeProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require(
        CHROMIUM.exists(), f"no Chromium at {CHROMIUM} (make test installs it as root; else apt-get install chromium)"
    )
    assert shutil.which("node") and (JS_DIR / "node_modules" / "playwright-core").is_dir(), "run `npm ci` in tests/js"
    folder = tmp_path_factory.mktemp("family-page")
    media = [write_sample(kind, folder / f"{kind}.mp4", num_frames=17) for kind in ("depth", "mask")]
    media.append(encode_video([np.zeros((240, 416, 3), np.uint8)] * 17, folder / "black.mp4", 16.0).path)
    media.append(write_sample("letterbox", folder / "letterbox.mp4", num_frames=17))
    screenshot = folder / "playground-family.png"
    env = {**os.environ, "VACE_URL": server.url, "VACE_KEY": API_KEY, "CHROMIUM": str(CHROMIUM)}
    proc = subprocess.run(
        ["node", "playground_family.mjs", *map(str, media), str(screenshot)],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    report = json.loads(lines[-1])
    assert "failure" not in report, f"{report['failure']}\nserver log:\n{server.output()[-3000:]}"
    assert report["pageErrors"] == [], report["pageErrors"]
    return report


def test_every_endpoint_has_its_own_form(page_run: dict[str, Any]) -> None:
    assert [value for value, _ in page_run["tasks"]] == ["", "pose", "depth", "inpainting", "outpainting", "reframe"]
    assert page_run["tasks"][0][1].startswith("(base)") and page_run["firstTask"] == "pose"
    assert {"mask_video_url", "mask_image_url", "preprocess"} <= set(page_run["inpaintingFields"])
    assert page_run["maskAccept"] == "video/*"
    assert {"expand_left", "expand_ratio"} <= set(page_run["outpaintingFields"])
    assert not {"preprocess", "mask_video_url"} & set(page_run["outpaintingFields"])
    assert {"zoom_factor", "trim_borders"} <= set(page_run["reframeFields"])
    assert not {"ref_image_urls", "preprocess"} & set(page_run["reframeFields"])
    assert {"task", "video_url", "mask_image_url"} <= set(page_run["baseFields"])
    assert page_run["baseTaskOptions"] == ["depth", "pose", "inpainting", "outpainting", "reframe"]
    assert "-X POST http" in page_run["baseCurl"] and "/queue/fal-ai/wan-vace-14b \\" in page_run["baseCurl"]


def test_the_mask_shows_over_the_video_and_a_black_mask_is_refused_at_its_field(page_run: dict[str, Any]) -> None:
    inpainting = page_run["inpainting"]
    # num_frames defaults to 81: the 17-frame clip's last frame is held
    assert inpainting["size"] == [416, 240] and "output 416x240 · 81 frames at 16 fps" in inpainting["caption"]
    assert any(note.startswith("inpainting: mask mode per frame") for note in inpainting["notes"])
    share = int(inpainting["caption"].split("% of frame")[0].rsplit(" ", 1)[1]) / 100
    assert 0.05 < inpainting["red"] < 0.3 and abs(inpainting["red"] - share) < 0.03  # red is what the mask marks
    assert "black everywhere" in page_run["blackMaskError"] and "mask_empty" in page_run["blackMaskError"]


def test_outpainting_shows_where_the_source_lands(page_run: dict[str, Any]) -> None:
    grown = page_run["outpainting"]
    assert page_run["carriedVideo"]
    assert any(note.startswith("outpainting: left grow by 0.25") for note in grown["notes"])
    # The new border is on the left; rounding the canvas to 16 adds a few generated rows above and below the source.
    assert grown["edges"]["left"] == 1 and grown["edges"]["right"] < 0.1
    assert 0.1 < grown["red"] < 0.3


def test_reframe_previews_trim_and_zoom_and_runs(page_run: dict[str, Any]) -> None:
    reframe, zoomed = page_run["reframe"], page_run["zoomed"]
    assert "reframe: bars trimmed (top 30, bottom 30, left 0, right 0 px)" in reframe["notes"]
    assert reframe["size"] == [320, 320] and reframe["edges"]["top"] == 1 and reframe["edges"]["middle"] == 0
    assert abs(reframe["red"] - (1 - 138 / 320)) < 0.03  # the 416x180 picture fitted to 320 wide: 138 rows kept
    assert zoomed["red"] < reframe["red"] - 0.2  # zoomed in by half, the picture covers more of the canvas
    assert page_run["resultSize"] == [320, 320] and "step 2/2" in page_run["log"] and page_run["formError"] == ""
    assert "/queue/fal-ai/wan-vace-14b/reframe" in page_run["curl"]
    assert page_run["reframeAgain"]["red"] == reframe["red"]  # via the base endpoint's form and back: the same values
