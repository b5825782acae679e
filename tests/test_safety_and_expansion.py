"""The safety checker and prompt expansion on tiny weights.

The tiny safety classifier's last bias favours ``normal``; flipping it makes it flag everything, which is how these
tests force a flag: on the inputs (refused before any model work), on the output only (flipped during denoising:
the job fails and nothing is encoded or published) and through the HTTP server (422, no file stored; a queued job's
control video, kept while it ran, is deleted from the directory or the bucket once its output is flagged). Expansion
runs through the tiny local LM (the output's prompt is exactly what it generates greedily) and through an
OpenAI-compatible endpoint served on loopback by the test; every kind of expander failure keeps the prompt.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import httpx
import pytest
import torch
from s3_fixtures import FILE_STORES, files_setting, s3_server, stored_names  # noqa: F401
from server_fixtures import SMALL_JOB, ThreadServer, free_port, wait_until
from test_generate import run_job
from transformers import AutoModelForCausalLM, AutoTokenizer, ViTForImageClassification

from pipelines.errors import InputError
from pipelines.hooks import JobHooks
from pipelines.loading import ModelManager
from pipelines.manifest import AUXILIARY, PROMPT_EXPANDER, SAFETY_CHECKER
from pipelines.prompt_expansion import (
    SYSTEM_PROMPT,
    LocalExpander,
    OpenAIExpander,
    chat_messages,
    clean_answer,
    expand_prompt,
)
from pipelines.runtime import RuntimeConfig
from pipelines.safety import SafetyChecker, sample_frames
from server import cli
from server.config import Settings
from weights.check import check

ANSWER = "A young dancer in a red dress spins slowly on a sunlit park lawn, soft golden light, steady wide shot."
SAFETY = AUXILIARY[SAFETY_CHECKER].folder


# ---------------------------------------------------------------- fixtures and helpers


@contextmanager
def flagging(checker: SafetyChecker) -> Iterator[None]:
    """Make the loaded classifier call every image unsafe, for the duration."""
    bias = checker.model.classifier.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.copy_(-saved)
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def weights_variant(tiny_weights: Path, dest: Path, safety: str) -> Path:
    """The tiny weights with the safety checker ``flagging`` (saved with its bias flipped) or ``absent``."""
    for child in tiny_weights.iterdir():
        if child.name != SAFETY.split("/")[0]:
            (dest / child.name).symlink_to(child)
    if safety == "flagging":
        model = ViTForImageClassification.from_pretrained(tiny_weights / SAFETY)
        with torch.no_grad():
            model.classifier.bias.neg_()
        model.save_pretrained(dest / SAFETY)
        processor = "preprocessor_config.json"
        (dest / SAFETY / processor).write_bytes((tiny_weights / SAFETY / processor).read_bytes())
    return dest


@pytest.fixture(scope="module")
def chat_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback OpenAI-compatible chat endpoint. The first path segment picks its behaviour:
    ``/ok/v1`` answers, ``/error/v1`` gives 500, ``/slow/v1`` answers after 2 s, ``/garbage/v1`` sends no JSON,
    ``/empty/v1`` answers with empty content, ``/shape/v1`` answers JSON without choices."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            mode, rest = self.path.strip("/").split("/", 1)
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            received.append({"mode": mode, "path": rest, "body": body, "auth": self.headers.get("authorization")})
            if mode == "slow":
                time.sleep(2)
            content = {"ok": ANSWER, "slow": ANSWER, "empty": ""}.get(mode)
            if mode == "error":
                status, data = 500, b'{"error": "boom"}'
            elif mode == "garbage":
                status, data = 200, b"<html>not json"
            elif mode == "shape":
                status, data = 200, b'{"object": "chat.completion"}'
            else:
                answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f'  "{content}"\n'}}]}
                status, data = 200, json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError):  # the slow answer's client gave up, as it should
                self.wfile.write(data)

        def log_message(self, *_args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    httpd.shutdown()


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# ---------------------------------------------------------------- safety checker


def test_sampling_and_manifest(tiny_weights):
    assert sample_frames(list(range(241))) == [0, 34, 69, 103, 137, 171, 206, 240]
    assert sample_frames([1, 2, 3]) == [1, 2, 3]
    report = check(tiny_weights, keys=[SAFETY_CHECKER, PROMPT_EXPANDER])
    assert report.auxiliary() == {SAFETY_CHECKER: "ok", PROMPT_EXPANDER: "ok"}, report.render()


def test_flagged_input_is_refused_before_any_model_work(tiny_weights, tmp_path, pose_video):
    manager = ModelManager(tiny_weights, device="cpu")  # its own checker: flipping it leaves the session's alone
    log: list[str] = []
    with flagging(manager.safety_checker()), pytest.raises(InputError) as err:
        run_job(
            manager, tmp_path, hooks=JobHooks(log=log.append), video_url=str(pose_video), enable_safety_checker=True
        )
    assert (err.value.type, err.value.loc) == ("content_policy_violation", ("video_url",))
    assert err.value.detail()[0]["loc"] == ["body", "video_url"]
    assert manager.loaded() == [] and not any(line.startswith("loading") for line in log)
    assert files_in(tmp_path / "out") == []


def test_missing_checker_weights_refuse_the_option(tiny_weights, tmp_path, pose_video):
    manager = ModelManager(weights_variant(tiny_weights, tmp_path, "absent"), device="cpu")
    with pytest.raises(InputError) as err:
        run_job(manager, tmp_path, video_url=str(pose_video), enable_safety_checker=True)
    assert (err.value.type, err.value.loc) == ("not_supported", ("enable_safety_checker",))


def test_flagged_output_publishes_nothing_and_http_expansion(tiny_weights, tmp_path, pose_video, chat_server):
    """Inputs pass; the classifier turns during denoising, so only the generated frames are flagged. The prompt was
    expanded by the loopback endpoint first (with our system prompt, the user's prompt and the key)."""
    url, received = chat_server
    runtime = RuntimeConfig(
        prompt_expander="openai", expander_url=f"{url}/ok/v1", expander_model="tiny-chat", expander_api_key="sk-test"
    )
    manager = ModelManager(tiny_weights, device="cpu", runtime=runtime)
    checker = manager.safety_checker()  # this manager's own: it stays flipped
    log: list[str] = []

    def on_step(i: int, _total: int) -> None:
        if i == 1:
            with torch.no_grad():
                checker.model.classifier.bias.neg_()

    hooks = JobHooks(log=log.append, step=on_step)
    with pytest.raises(InputError) as err:
        run_job(
            manager,
            tmp_path,
            hooks=hooks,
            video_url=str(pose_video),
            num_frames=17,
            seed=3,
            enable_safety_checker=True,
            enable_prompt_expansion=True,
        )
    assert err.value.type == "content_policy_violation" and err.value.detail()[0]["loc"] == ["body"]
    assert any(line.startswith("safety check: the inputs passed") for line in log)
    expanded = [line for line in log if line.startswith(f"prompt expanded by tiny-chat at {url}/ok/v1")]
    assert len(expanded) == 1 and expanded[0].endswith(ANSWER)
    assert files_in(tmp_path / "out") == [] and not (tmp_path / "work" / "video.mp4").exists()

    request = received[-1]
    assert (request["mode"], request["path"], request["auth"]) == ("ok", "v1/chat/completions", "Bearer sk-test")
    body = request["body"]
    assert body["model"] == "tiny-chat" and body["temperature"] == 0 and body["max_tokens"] == 256
    assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert body["messages"][1]["role"] == "user" and "a person dancing" in body["messages"][1]["content"]
    assert "pose" in body["messages"][1]["content"]


# ---------------------------------------------------------------- prompt expansion


def test_local_expansion_with_the_checker_passing(tiny_weights, tmp_path, pose_video):
    """The tiny LM's greedy answer is the prompt the job used and returned; the checker passes inputs and output."""
    runtime = RuntimeConfig(prompt_expander="local", expander_max_tokens=12)
    manager = ModelManager(tiny_weights, device="cpu", runtime=runtime)
    log: list[str] = []
    out = run_job(
        manager,
        tmp_path,
        hooks=JobHooks(log=log.append),
        video_url=str(pose_video),
        num_frames=17,
        seed=5,
        enable_safety_checker=True,
        enable_prompt_expansion=True,
    )

    folder = tiny_weights / AUXILIARY[PROMPT_EXPANDER].folder
    tokenizer, lm = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer.apply_chat_template(
        chat_messages("a person dancing", "pose"), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    generated = lm.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert 0 < len(generated) <= 12
    expected = clean_answer(tokenizer.decode(generated, skip_special_tokens=True))
    assert expected and out.prompt == expected != "a person dancing"
    assert any(line.startswith("prompt expanded by local") for line in log)
    assert any(line.startswith("safety check: the generated video passed") for line in log)
    assert Path(out.video.url).is_file()
    assert manager.describe()["loaded_stages"] == ["safety_checker", "prompt_expander"]
    again = expand_prompt(manager.prompt_expander(), "a person dancing", "pose", lambda _m: None)
    assert again == out.prompt  # greedy: the same request gets the same prompt


@pytest.mark.parametrize("mode,reason", [
    ("error", "HTTPStatusError"), ("slow", "ReadTimeout"), ("refused", "ConnectError"),
    ("garbage", "JSONDecodeError"), ("shape", "KeyError"), ("empty", "empty answer"), ("missing", "FileNotFoundError"),
])  # fmt: skip
def test_a_failing_expander_keeps_the_prompt(chat_server, tmp_path, mode, reason):
    url, _ = chat_server
    if mode == "missing":
        expander: Any = LocalExpander(tmp_path / "no-model", torch.device("cpu"), torch.float32, 8)
    else:
        base = f"http://127.0.0.1:{free_port()}/v1" if mode == "refused" else f"{url}/{mode}/v1"
        expander = OpenAIExpander(base, "tiny-chat", timeout_s=0.5)
    log: list[str] = []
    assert expand_prompt(expander, "a cat", "depth", log.append) == "a cat"
    assert len(log) == 1 and log[0].startswith("warning: prompt expansion with") and reason in log[0]
    assert "using the prompt as given" in log[0]


def test_no_expander_and_answer_cleaning():
    log: list[str] = []
    assert expand_prompt(None, "a cat", "pose", log.append) == "a cat"
    assert log == ["prompt expansion is not configured on this server; using the prompt as given"]
    assert clean_answer('<think>\nthe user wants\n</think>\n\n "A cat  on a\nwall." ') == "A cat on a wall."


def test_runtime_flags(monkeypatch):
    monkeypatch.setenv("VACE_EXPANDER_API_KEY", "sk-env")
    monkeypatch.setenv("VACE_PROMPT_EXPANDER", "openai")
    args = cli.build_parser().parse_args(
        [
            "serve",
            "--expander-url",
            "http://127.0.0.1:11434/v1",
            "--expander-model",
            "qwen2.5:7b",
            "--safety-threshold",
            "0.8",
            "--expander-timeout-s",
            "5",
        ]
    )
    runtime = cli.settings(args).runtime
    assert (runtime.prompt_expander, runtime.expander_url, runtime.expander_model) == (
        "openai",
        "http://127.0.0.1:11434/v1",
        "qwen2.5:7b",
    )
    assert (runtime.expander_api_key, runtime.safety_threshold, runtime.expander_timeout_s) == ("sk-env", 0.8, 5.0)
    assert "sk-env" not in repr(runtime)
    with pytest.raises(cli.SettingsError, match="needs an expander URL"):
        cli.settings(cli.build_parser().parse_args(["serve"]))  # openai from the env, but no URL


# ---------------------------------------------------------------- through the HTTP server


def test_server_refuses_a_flagged_job_and_stores_nothing(tiny_weights, tmp_path, pose_video, chat_server):
    url, _ = chat_server
    weights = tmp_path / "weights"
    weights.mkdir()
    config = Settings(
        weights_dir=weights_variant(tiny_weights, weights, "flagging"),
        data_dir=tmp_path / "data",
        port=free_port(),
        devices=("cpu",),
        prompt_expander="openai",
        expander_url=f"{url}/ok/v1",
        expander_model="tiny-chat",
        expander_api_key="sk-secret",
    )
    video = "data:video/mp4;base64," + base64.b64encode(pose_video.read_bytes()).decode()
    with ThreadServer(config) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        ready = client.get("/ready")
        body = ready.json()
        assert body["safety_checker"] == {"weights_present": True, "threshold": 0.5}
        assert body["prompt_expansion"] == {
            "backend": "openai",
            "configured": True,
            "url": f"{url}/ok/v1",
            "model": "tiny-chat",
        }
        assert "sk-secret" not in ready.text

        response = client.post(
            "/fal-ai/wan-vace-14b/pose",
            json={
                "prompt": "a person dancing",
                "video_url": video,
                "enable_safety_checker": True,
                "num_frames": 17,
                "num_inference_steps": 2,
            },
        )
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail[0]["type"] == "content_policy_violation" and detail[0]["loc"] == ["body", "video_url"]
        assert response.headers["x-fal-error-type"] == "content_policy_violation"
        assert client.get("/ready").json()["devices"][0]["loaded_stages"] == ["safety_checker"]
    assert files_in(config.files_dir) == []


@pytest.mark.parametrize("file_store", FILE_STORES)
def test_a_flagged_output_deletes_the_control_video_kept_for_it(
    file_store, request, tiny_weights, tmp_path, pose_video
):
    """With ``preprocess=true`` the control video is stored (and its URL shown) as soon as preprocessing made it.
    The classifier is flipped while the job denoises, after its inputs passed: the output is flagged, and the worker
    deletes the control video and takes its URL off the job, so nothing of the flagged job stays."""
    files = files_setting(file_store, request)
    config = Settings(
        weights_dir=tiny_weights, data_dir=tmp_path / "data", port=free_port(), devices=("cpu",), files=files
    )
    video = "data:video/mp4;base64," + base64.b64encode(pose_video.read_bytes()).decode()
    with ThreadServer(config) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        checker = server.app.state.pool.workers[0].models.safety_checker()  # the worker's own, loaded once
        job = client.post(
            "/queue/fal-ai/wan-vace-14b/pose",
            json={
                "prompt": "a person dancing",
                "video_url": video,
                **SMALL_JOB,
                "num_inference_steps": 20,
                "preprocess": True,
                "enable_safety_checker": True,
            },
        ).json()["request_id"]
        status_url = f"/queue/fal-ai/wan-vace-14b/requests/{job}/status?logs=1"

        def denoising() -> dict[str, Any] | None:
            body = client.get(status_url).json()
            return body if any(line["message"].startswith("step 1/") for line in body["logs"]) else None

        control_url = wait_until(denoising, 120, "the first denoising step")["control_video_url"]
        assert httpx.get(control_url, follow_redirects=True, timeout=30).status_code == 200
        # the control video, and the live preview of the steps so far once the worker has written one
        assert stored_names(files, config.data_dir) in (["control.mp4"], ["control.mp4", "preview.webp"])
        with flagging(checker):
            done = wait_until(
                lambda: (s := client.get(status_url).json())["status"] == "COMPLETED" and s, 120, "the job to end"
            )
        assert done["error_type"] == "content_policy_violation" and "control_video_url" not in done
        assert any(line["message"].startswith("safety check: the inputs passed") for line in done["logs"])
        assert stored_names(files, config.data_dir) == []
        assert httpx.get(control_url, follow_redirects=True, timeout=30).status_code in (403, 404)
