"""LoRAs through the HTTP server: GET /loras and /ready list the installed ones, a job takes one by name, and each
refused LoRA is a fal-shaped 422 naming it, after which the server goes on serving."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file
from server_fixtures import SMALL_JOB, ThreadServer, control_videos, free_port, server_weights  # noqa: F401
from test_hostile_loras import write_header_lora

from server.config import Settings
from weights.tiny.loras import write_lora

API_KEY = "lora-key"
POSE = "/fal-ai/wan-22-vace-fun-a14b/pose"
LORA_LIMIT = 200_000


@pytest.fixture(scope="module")
def client(server_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    config = Settings(
        weights_dir=server_weights,
        data_dir=tmp_path_factory.mktemp("lora-data"),
        port=free_port(),
        api_keys=frozenset({API_KEY}),
        limits=[f"max_lora_bytes={LORA_LIMIT}"],
    )
    with (
        ThreadServer(config) as server,
        httpx.Client(base_url=server.url, headers={"authorization": f"Key {API_KEY}"}, timeout=120) as c,
    ):
        yield c


def data_uri(data: bytes) -> str:
    return "data:application/octet-stream;base64," + base64.b64encode(data).decode()


def _bytes(write: Callable[[Path], object], tmp_path: Path) -> bytes:
    path = tmp_path / "lora.safetensors"
    write(path)
    return path.read_bytes()


def test_installed_loras_are_listed(client):
    listed = client.get("/loras").json()["loras"]
    assert {item["name"] for item in listed} >= {"tiny-wan21", "tiny-wan22"}
    assert all(item["file_size"] > 0 for item in listed)
    assert {"tiny-wan21", "tiny-wan22"} <= set(client.get("/ready").json()["loras"])
    assert httpx.get(f"{client.base_url}/loras").status_code == 401  # the list needs a key
    assert "loras" not in httpx.get(f"{client.base_url}/ready").json()


def test_each_refusal_is_a_422_naming_the_lora_and_the_server_goes_on(client, control_videos, tmp_path):
    video = data_uri(control_videos["pose"].read_bytes())
    buffer = io.BytesIO()
    torch.save({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 24)}, buffer)
    wider = _bytes(
        lambda p: write_lora(
            p,
            {
                "blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 48),
                "blocks.0.attn1.to_q.lora_B.weight": torch.ones(48, 4),
            },
        ),
        tmp_path,
    )
    oversized = _bytes(lambda p: save_file({"x": torch.zeros(LORA_LIMIT // 4 + 1)}, p), tmp_path)
    nan_alpha = _bytes(lambda p: write_header_lora(p, {"lora_alpha": math.nan}), tmp_path)
    refused = [
        ("pickle", data_uri(buffer.getvalue()), "lora_load_error"),
        ("another architecture", data_uri(wider), "lora_load_error"),
        ("unreadable alpha", data_uri(nan_alpha), "lora_load_error"),
        ("missing name", "no-such-lora", "lora_not_found"),
        ("oversized", data_uri(oversized), "file_download_error"),
        ("private address", "http://127.0.0.1:9/style.safetensors", "file_download_error"),
    ]
    for case, path, error_type in refused:
        body = {
            "prompt": "a person dancing",
            "video_url": video,
            **SMALL_JOB,
            "loras": [{"path": "tiny-wan21", "transformer": "low"}, {"path": path}],
        }
        response = client.post(POSE, json=body)
        assert response.status_code == 422, (case, response.text)
        (detail,) = response.json()["detail"]
        assert detail["loc"] == ["body", "loras", 1, "path"] and detail["type"] == error_type, (case, detail)
    pissa = _bytes(lambda p: write_header_lora(p, {"init_lora_weights": "pissa"}), tmp_path)  # the option ignored
    done = client.post(
        POSE,
        json={
            "prompt": "a person dancing",
            "video_url": video,
            **SMALL_JOB,
            "loras": [
                {"path": "tiny-wan22", "scale": 0.7, "transformer": "high"},
                {"path": data_uri(pissa), "transformer": "low"},
            ],
        },
    )
    assert done.status_code == 200, done.text
    assert done.json()["video"]["num_frames"] == 17
