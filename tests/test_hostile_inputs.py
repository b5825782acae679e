"""Hostile inputs: SSRF attempts on media URLs, every input limit, and malformed or unusual media.

Everything network-related sends traffic to loopback only: the refused cases are refused before any connection,
and the redirect case uses two loopback servers, one permitted by the allow-list and one not.
"""

from __future__ import annotations

import base64
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from server_fixtures import ThreadServer, free_port, server_weights  # noqa: F401

from pipelines.context import JobContext
from pipelines.errors import InputError
from pipelines.fetch import fetch_to_file, load_image
from pipelines.generate import generate
from pipelines.hooks import JobHooks
from pipelines.limits import Limits
from pipelines.loading import ModelManager
from pipelines.schema import VaceInput
from server.config import Settings

FAST = {"num_inference_steps": 2, "acceleration": "none", "num_frames": 17, "resolution": "240p", "seed": 1}
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


DEFAULT = JobContext()


def allowing(*entries: str, **limits: float) -> JobContext:
    """A context with these allow-list entries and limits (the rest default)."""
    return JobContext(limits=Limits(**limits), fetch_allow=entries)  # type: ignore[arg-type]


class Recorder(BaseHTTPRequestHandler):
    """Serves ``/ok`` (a few bytes), redirects ``/redirect?<url>`` to ``<url>``, and records Host headers."""

    hosts: ClassVar[list[str]] = []  # one list for the handler instances of all requests

    def do_GET(self) -> None:
        type(self).hosts.append(self.headers.get("host", ""))
        if self.path.startswith("/redirect?"):
            self.send_response(302)
            self.send_header("location", self.path.partition("?")[2])
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = b"hello world"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def two_servers() -> Iterator[tuple[int, int]]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Recorder) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield servers[0].server_address[1], servers[1].server_address[1]
    for s in servers:
        s.shutdown()
        s.server_close()


def refused(url: str, tmp_path: Path, ctx: JobContext = DEFAULT) -> InputError:
    with pytest.raises(InputError) as exc:
        fetch_to_file(url, "video_url", tmp_path, ctx, timeout_s=2)
    assert exc.value.type == "file_download_error" and exc.value.loc == ("video_url",)
    assert list(tmp_path.iterdir()) == []
    return exc.value


# ---------------------------------------------------------------- SSRF


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/ok",
        "http://localhost:{port}/ok",
        "http://2130706433:{port}/ok",  # decimal 127.0.0.1
        "http://0x7f.1:{port}/ok",  # hex + short form
        "http://017700000001:{port}/ok",  # octal
        "http://127.1:{port}/ok",
        "http://[::1]:{port}/ok",
        "http://[::ffff:127.0.0.1]:{port}/ok",  # IPv4-mapped IPv6
        "http://[::ffff:7f00:1]:{port}/ok",
        "http://0.0.0.0:{port}/ok",
        "http://10.0.0.1/",
        "http://10.255.255.254:8080/x.mp4",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # shared address space
        "http://100.100.100.200/latest/meta-data/",  # Alibaba cloud metadata
        "http://169.254.169.254/latest/meta-data/",  # AWS/GCP/Azure metadata
        "http://[fd00:ec2::254]/latest/meta-data/",  # AWS metadata over IPv6
        "http://[fe80::1]/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[::]/",
        "https://127.0.0.1:{port}/ok",
    ],
)
def test_private_addresses_are_refused(url: str, tmp_path: Path, two_servers: tuple[int, int]) -> None:
    before = len(Recorder.hosts)
    err = refused(url.format(port=two_servers[0]), tmp_path)
    assert "non-public" in err.msg
    assert len(Recorder.hosts) == before  # refused before connecting


@pytest.mark.parametrize("url", ["ftp://example.com/x.mp4", "gopher://127.0.0.1:70/", "dict://127.0.0.1:11211/"])
def test_other_schemes_are_refused(url: str, tmp_path: Path) -> None:
    assert "scheme" in refused(url, tmp_path).msg


def test_hostname_checked_after_dns_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A public-looking name that resolves to a private address (or to several, one private) is refused."""
    answers = {"internal.example.com": ["93.184.216.34", "10.1.2.3"], "meta.example.com": ["169.254.169.254"]}

    def fake(host: str, port: int, *args: object, **kwargs: object) -> list:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert "10.1.2.3" in refused("http://internal.example.com/v.mp4", tmp_path).msg
    assert "169.254.169.254" in refused("https://meta.example.com/v.mp4", tmp_path).msg


def test_redirect_to_a_non_allowed_address_is_refused(tmp_path: Path, two_servers: tuple[int, int]) -> None:
    a, b = two_servers
    ctx = allowing(f"127.0.0.1:{a}")  # A stands for an allowed (public) source; B for the loopback target
    assert fetch_to_file(f"http://127.0.0.1:{a}/ok", "video_url", tmp_path, ctx).read_bytes() == b"hello world"
    before = len(Recorder.hosts)
    err = refused_dir(f"http://127.0.0.1:{a}/redirect?http://127.0.0.1:{b}/ok", tmp_path / "r", ctx)
    assert "non-public" in err.msg and len(Recorder.hosts) == before + 1  # A answered, B was never contacted
    refused_dir(f"http://127.0.0.1:{a}/redirect?http://[::1]:{b}/ok", tmp_path / "r6", ctx)
    refused_dir(f"http://127.0.0.1:{a}/redirect?http://169.254.169.254/latest/meta-data/", tmp_path / "m", ctx)
    refused_dir(f"http://127.0.0.1:{a}/redirect?file:///etc/passwd", tmp_path / "f", ctx)
    # With both permitted, the same redirect is followed.
    both = allowing(f"127.0.0.1:{a}", f"127.0.0.1:{b}")
    got = fetch_to_file(f"http://127.0.0.1:{a}/redirect?http://127.0.0.1:{b}/ok", "video_url", tmp_path / "ok", both)
    assert got.read_bytes() == b"hello world"


def refused_dir(url: str, folder: Path, ctx: JobContext = DEFAULT) -> InputError:
    folder.mkdir()
    return refused(url, folder, ctx)


def test_redirect_loops_are_bounded(tmp_path: Path, two_servers: tuple[int, int]) -> None:
    a, _ = two_servers
    url = f"http://127.0.0.1:{a}/ok"
    for _ in range(4):
        url = f"http://127.0.0.1:{a}/redirect?{url}"
    assert "too many redirects" in refused(url, tmp_path, allowing("127.0.0.1", max_redirects=3)).msg


def test_allow_list_forms_and_connecting_to_the_vetted_address(
    tmp_path: Path, two_servers: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two_servers
    for entry in ("127.0.0.0/8", "127.0.0.1", f"127.0.0.1:{a}", "localhost"):
        host = "localhost" if entry == "localhost" else "127.0.0.1"
        got = fetch_to_file(f"http://{host}:{a}/ok", "video_url", tmp_path, allowing(entry))
        assert got.read_bytes() == b"hello world"
    refused_dir(f"http://127.0.0.1:{a}/ok", tmp_path / "x", allowing("10.0.0.0/8"))
    with pytest.raises(ValueError):
        allowing("127.0.0.1:http")

    # DNS is asked once per hop and the connection goes to that answer, with the original Host header.
    calls: list[str] = []
    real = socket.getaddrinfo

    def once(host: str, port: int, *args: object, **kwargs: object) -> list:
        calls.append(host)
        return real("127.0.0.1", port, *args, **kwargs) if host == "media.test" else real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", once)
    before = len(Recorder.hosts)
    got = fetch_to_file(f"http://media.test:{a}/ok", "video_url", tmp_path, allowing(f"media.test:{a}"))
    assert got.read_bytes() == b"hello world"
    # the name is resolved once, by us; the client then only "resolves" the vetted address literal
    assert calls == ["media.test", "127.0.0.1"] and Recorder.hosts[before:] == [f"media.test:{a}"]


def test_own_file_urls_and_cli_local_paths_still_work(tmp_path: Path) -> None:
    served = tmp_path / "served.mp4"
    served.write_bytes(b"video bytes")
    ours = JobContext(
        local_files=lambda ref, _workdir, _max_bytes: served if ref.startswith("http://127.0.0.1:1/files/") else None
    )
    assert fetch_to_file("http://127.0.0.1:1/files/abc/v.mp4", "video_url", tmp_path, ours) == served
    assert fetch_to_file(str(served), "video_url", tmp_path, ours) == served  # the CLI's local paths
    assert fetch_to_file(served.as_uri(), "video_url", tmp_path, ours) == served
    server = JobContext(local_files=ours.local_files, local_paths=False)  # a server's remote callers
    assert fetch_to_file("http://127.0.0.1:1/files/abc/v.mp4", "video_url", tmp_path, server) == served
    for i, ref in enumerate((str(served), served.as_uri())):
        assert "only http(s) URLs" in refused_dir(ref, tmp_path / f"r{i}", server).msg


# ---------------------------------------------------------------- limits


def test_download_size_and_time_limits(tmp_path: Path, two_servers: tuple[int, int]) -> None:
    a, _ = two_servers
    assert "limit" in refused(f"http://127.0.0.1:{a}/ok", tmp_path, allowing("127.0.0.1", max_download_bytes=5)).msg

    slow = socket.socket()  # accepts, never answers
    slow.bind(("127.0.0.1", 0))
    slow.listen(1)
    try:
        with pytest.raises(InputError) as exc:
            fetch_to_file(
                f"http://127.0.0.1:{slow.getsockname()[1]}/x.mp4",
                "video_url",
                tmp_path,
                allowing("127.0.0.1", download_timeout_s=0.5),
            )
        assert "timed out" in exc.value.msg and exc.value.type == "file_download_error"
    finally:
        slow.close()


def test_data_uri_limit_is_10_mib_by_default(tmp_path: Path) -> None:
    assert DEFAULT.limits.max_data_uri_bytes == 10 * 1024**2
    big = "data:video/mp4;base64," + base64.b64encode(b"\0" * (10 * 1024**2 + 3)).decode()
    assert "limit" in refused(big, tmp_path).msg
    ok = "data:video/mp4;base64," + base64.b64encode(b"\1" * 1000).decode()
    assert fetch_to_file(ok, "video_url", tmp_path, DEFAULT).stat().st_size == 1000
    # a list item's data URI names its file after the item (the path into the list is not a string)
    assert fetch_to_file(ok, ("ref_image_urls", 1), tmp_path, DEFAULT).name.startswith("ref_image_urls-1-")


def test_image_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(InputError) as exc:
        load_image(str(path), "first_frame_url", tmp_path, allowing(max_image_pixels=300 * 200 - 1))
    assert exc.value.loc == ("first_frame_url",) and "300x200" in exc.value.msg
    assert load_image(str(path), "first_frame_url", tmp_path, allowing(max_image_pixels=300 * 200)).size == (300, 200)


def job(models: ModelManager, tmp_path: Path, ctx: JobContext = DEFAULT, **fields: object):  # type: ignore[no-untyped-def]
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)

    def publish(path: Path, _ct: str) -> str:
        return str(path.replace(out / path.name))

    inp = VaceInput(**{"prompt": "a person dancing", **FAST, **fields})
    return generate(
        inp, task="pose", model="wan-vace-14b", manager=models, workdir=work, publish=publish, hooks=JobHooks(), ctx=ctx
    )


def make_video(path: Path, *args: str, size: str = "64x48", frames: int = 5, rate: int = 8) -> Path:
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate={rate}",
            "-frames:v",
            str(frames),
            *args,
            str(path),
        ],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture(scope="module")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "small.mp4", "-pix_fmt", "yuv420p", size="64x48", frames=9)


def expect_refusal(
    models: ModelManager, tmp_path: Path, ctx: JobContext, loc: tuple, type_: str, **fields: object
) -> InputError:
    with pytest.raises(InputError) as exc:
        job(models, tmp_path, ctx, **fields)
    assert exc.value.loc == loc and exc.value.type == type_, exc.value
    return exc.value


def test_video_limits(models: ModelManager, tmp_path: Path, small_video: Path) -> None:
    for limits in (Limits(max_video_pixels=64 * 48 - 1), Limits(max_video_frames=8), Limits(max_video_seconds=1.0)):
        expect_refusal(
            models,
            tmp_path,
            JobContext(limits=limits),
            ("video_url",),
            "video_too_large" if limits.max_video_pixels < 9999 else "video_too_long",
            video_url=str(small_video),
        )


def test_prompt_and_reference_limits(models: ModelManager, tmp_path: Path, small_video: Path) -> None:
    ctx = allowing(max_prompt_chars=10, max_ref_images=2)
    expect_refusal(models, tmp_path, ctx, ("prompt",), "prompt_too_long", video_url=str(small_video), prompt="x" * 11)
    expect_refusal(
        models,
        tmp_path,
        ctx,
        ("negative_prompt",),
        "prompt_too_long",
        video_url=str(small_video),
        prompt="ok",
        negative_prompt="y" * 11,
    )
    img = tmp_path / "ref.png"
    Image.new("RGB", (8, 8)).save(img)
    expect_refusal(
        models,
        tmp_path,
        ctx,
        ("ref_image_urls",),
        "too_many_reference_images",
        video_url=str(small_video),
        prompt="ok",
        negative_prompt="",
        ref_image_urls=[str(img)] * 3,
    )


def test_server_refuses_big_bodies_long_prompts_and_private_urls_fal_shaped(
    server_weights: Path, tmp_path: Path
) -> None:
    config = Settings(
        weights_dir=server_weights,
        data_dir=tmp_path / "data",
        port=free_port(),
        limits=Limits(max_prompt_chars=20, max_ref_images=1),
        max_body_bytes=4096,
    )
    with ThreadServer(config) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        url = "/fal-ai/wan-vace-14b/pose"
        big = client.post(url, json={"prompt": "x", "video_url": "data:video/mp4;base64," + "A" * 8000})
        assert big.status_code == 413 and big.json()["detail"][0]["type"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no content-length: read only up to the limit
            yield b'{"prompt": "x", "video_url": "data:,'
            yield b"A" * 8000
            yield b'"}'

        chunked = client.post(url, content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and chunked.json()["detail"][0]["type"] == "request_too_large"

        for body, loc, type_ in (
            ({"prompt": "x" * 21, "video_url": "https://example.com/v.mp4"}, ["body", "prompt"], "prompt_too_long"),
            (
                {
                    "prompt": "x",
                    "negative_prompt": "",
                    "video_url": "https://example.com/v.mp4",
                    "ref_image_urls": ["https://example.com/a.png"] * 2,
                },
                ["body", "ref_image_urls"],
                "too_many_reference_images",
            ),
        ):
            for path in (url, "/queue" + url):  # refused at submission: nothing is queued
                r = client.post(path, json=body)
                assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc
                assert r.json()["detail"][0]["type"] == type_
        # a private URL is refused by the job itself (the same 422 body), before any model work
        r = client.post(
            url,
            json={
                "prompt": "x",
                "negative_prompt": "",
                "video_url": "http://169.254.169.254/latest/meta-data/",
                "num_frames": 17,
                "num_inference_steps": 2,
            },
        )
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["type"] == "file_download_error" and "non-public" in r.json()["detail"][0]["msg"]

        # A second server in the same process keeps its own (default) limits, and the first keeps its own.
        other = Settings(weights_dir=server_weights, data_dir=tmp_path / "other", port=free_port())
        long_prompt = {"prompt": "x" * 21, "video_url": "https://example.com/v.mp4"}
        with ThreadServer(other) as second:
            assert httpx.post(f"{second.url}/queue{url}", json=long_prompt).status_code == 200
            assert client.post("/queue" + url, json=long_prompt).status_code == 422


# ---------------------------------------------------------------- hostile media


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Unusual but valid videos (each should generate) and broken ones (each should be refused)."""
    d = tmp_path_factory.mktemp("media")
    good = make_video(d / "good.mp4", "-pix_fmt", "yuv420p", frames=9)
    data = good.read_bytes()
    (d / "corrupt.mp4").write_bytes(data[:32] + bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8)))
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "garbage.bin").write_bytes(b"\x00\x01not a video at all" * 50)
    (d / "text.mp4").write_text("hello, I am a text file\n" * 20)
    (d / "empty.mp4").write_bytes(b"")
    subprocess.run(
        [FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", str(d / "audio.m4a")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48:rate=8",
            "-frames:v",
            "0",
            "-pix_fmt",
            "yuv420p",
            str(d / "zero_frames.mp4"),
        ],
        check=True,
        capture_output=True,
    )
    return {
        "zero_frames": d / "zero_frames.mp4",
        "good": good,
        "odd": make_video(d / "odd.mp4", "-pix_fmt", "yuv444p", size="63x47"),
        "odd_ffv1": make_video(d / "odd.mkv", "-c:v", "ffv1", size="65x37"),
        "10bit": make_video(
            d / "10bit.mp4", "-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error"
        ),
        "gray": make_video(d / "gray.mkv", "-c:v", "ffv1", "-pix_fmt", "gray"),
        "alpha": make_video(d / "alpha.mov", "-vf", "format=argb", "-c:v", "qtrle"),
        "alpha_png": make_video(d / "alpha_png.mov", "-vf", "format=rgba", "-c:v", "png"),
        "vfr": make_video(
            d / "vfr.mp4", "-vf", "setpts='PTS+if(gt(N,4),N*3,0)'", "-fps_mode", "vfr", "-pix_fmt", "yuv420p", frames=9
        ),
        "corrupt": d / "corrupt.mp4",
        "truncated": d / "truncated.mp4",
        "garbage": d / "garbage.bin",
        "text": d / "text.mp4",
        "empty": d / "empty.mp4",
        "audio": d / "audio.m4a",
    }


@pytest.mark.parametrize("name", ["odd", "odd_ffv1", "10bit", "gray", "alpha", "alpha_png", "vfr", "good"])
def test_unusual_videos_decode_to_rgb24(media: dict[str, Path], name: str) -> None:
    from pipelines.video_io import probe_video, read_frames

    info = probe_video(media[name])
    assert info.num_frames >= 5 and info.fps > 0
    frames = read_frames(media[name], list(range(info.num_frames)))
    assert len(frames) == info.num_frames
    assert all(f.shape == (info.height, info.width, 3) and f.dtype == np.uint8 for f in frames)
    assert max(float(f.std()) for f in frames) > 5  # real picture, not a blank conversion


def test_an_odd_sized_variable_rate_alpha_video_generates(models: ModelManager, tmp_path: Path) -> None:
    """One job covers the decode-path cases above at once (a job costs seconds, a decode milliseconds)."""
    video = make_video(
        tmp_path / "odd_alpha_vfr.mov",
        "-vf",
        "format=argb,setpts='PTS+if(gt(N,4),N*3,0)'",
        "-fps_mode",
        "vfr",
        "-c:v",
        "qtrle",
        size="63x47",
        frames=9,
    )
    out = job(models, tmp_path, video_url=str(video))
    assert out.video.num_frames == 17 and out.video.width % 16 == 0 and out.video.height % 16 == 0


@pytest.mark.parametrize(
    "name,type_",
    [
        ("corrupt", "video_decode_error"),
        ("truncated", "video_decode_error"),
        ("garbage", "video_decode_error"),
        ("text", "video_decode_error"),
        ("audio", "video_decode_error"),
        ("empty", "file_download_error"),
        ("zero_frames", "video_decode_error"),
    ],
)
def test_broken_videos_are_refused_before_the_model(
    models: ModelManager, tmp_path: Path, media: dict[str, Path], name: str, type_: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*_a: object, **_k: object) -> None:
        raise AssertionError("the model must not be loaded for a broken input")

    monkeypatch.setattr(models, "get", no_model)
    monkeypatch.setattr(models, "preprocessor", no_model)
    err = expect_refusal(models, tmp_path, DEFAULT, ("video_url",), type_, video_url=str(media[name]))
    assert len(err.msg) < 300 and "Traceback" not in err.msg


def test_files_cannot_be_walked(server_weights: Path, tmp_path: Path) -> None:
    config = Settings(weights_dir=server_weights, data_dir=tmp_path / "data", port=free_port())
    with ThreadServer(config) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        token = "A" * 32
        (config.files_dir / token).mkdir(parents=True)
        (config.files_dir / token / "clip.mp4").write_bytes(b"secret video")
        (config.files_dir / token / "clip.mp4.partial").write_bytes(b"in progress")
        assert client.get(f"/files/{token}/clip.mp4").content == b"secret video"
        (tmp_path / "data" / "outside.txt").write_text("outside the store")
        for path in (
            "/files",
            "/files/",
            f"/files/{token}",
            f"/files/{token}/",
            f"/files/{token[:-1]}/clip.mp4",
            f"/files/{token}/..%2f..%2fjobs.sqlite3",
            f"/files/{token}/%2e%2e%2f%2e%2e%2foutside.txt",
            "/files/%2e%2e/outside.txt",
            f"/files/{token}/%2e%2e",
            "/files/..%2f..%2foutside.txt/x",
            f"/files/{token}/.%2e/outside.txt",
            f"/files/{token}/..%5c..%5coutside.txt",
            f"/files/{token}/clip.mp4%00.txt",
            "/files/%2e%2e%2f%2e%2e/outside.txt",
            f"/files/{token}/clip.mp4.partial",
        ):
            r = client.get(path)
            assert r.status_code in (404, 405), (path, r.status_code)
            assert not any(s in r.content for s in (b"outside the store", b"SQLite", b"secret", b"in progress"))
