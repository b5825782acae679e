"""Media I/O against the real bundled ffmpeg: encode small synthetic videos, read them back, fetch every ref kind."""

from __future__ import annotations

import base64
import functools
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.context import JobContext
from pipelines.encode import QUALITY_CRF, WRITE_MODE_PRESET, encode_video, write_frames_zip
from pipelines.errors import InputError
from pipelines.fetch import fetch_to_file, load_image
from pipelines.video_io import iter_frames, probe_video, read_frames

W, H, N, FPS = 64, 48, 12, 12.0
LEVELS = [10 + 20 * i for i in range(N)]  # one flat gray level per frame, 20 apart: robust to lossy coding


def gray_frames() -> Iterator[np.ndarray]:
    return (np.full((H, W, 3), level, np.uint8) for level in LEVELS)


def noise_frames(n: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def level_of(frame: np.ndarray) -> float:
    return float(frame.mean())


@pytest.fixture(scope="module")
def gray_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_video(gray_frames(), tmp_path_factory.mktemp("video") / "gray.mp4", FPS).path


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A loopback static file server: (base URL, directory it serves)."""
    root = tmp_path_factory.mktemp("www")

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


CTX = JobContext(fetch_allow=("127.0.0.1",))  # the test servers are on loopback, refused by default


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield


def assert_download_error(exc: pytest.ExceptionInfo[InputError], field: str) -> None:
    assert exc.value.type == "file_download_error"
    assert exc.value.loc == (field,)
    assert len(exc.value.msg) < 300


# ---------------------------------------------------------------- decoding


def test_probe_reports_size_fps_and_exact_count(gray_video: Path) -> None:
    info = probe_video(gray_video)
    assert (info.width, info.height, info.num_frames) == (W, H, N)
    assert info.fps == pytest.approx(FPS)
    assert info.duration == pytest.approx(N / FPS)


def test_iter_frames_yields_every_frame_in_order(gray_video: Path) -> None:
    frames = list(iter_frames(gray_video))
    assert len(frames) == N
    assert all(f.dtype == np.uint8 and f.shape == (H, W, 3) for f in frames)
    assert [level_of(f) for f in frames] == pytest.approx(LEVELS, abs=3)


def test_read_frames_picks_repeats_and_pads_past_the_end(gray_video: Path) -> None:
    indices = [0, 3, 3, 7, 11, 11, 14, 30]
    frames = read_frames(gray_video, indices)
    assert len(frames) == len(indices)
    expected = [LEVELS[min(i, N - 1)] for i in indices]
    assert [level_of(f) for f in frames] == pytest.approx(expected, abs=3)
    assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in frames)
    assert read_frames(gray_video, []) == []
    with pytest.raises(ValueError):
        read_frames(gray_video, [3, 2])


def test_read_frames_stops_early_on_a_prefix(gray_video: Path) -> None:
    frames = read_frames(gray_video, [1, 2])
    assert [level_of(f) for f in frames] == pytest.approx(LEVELS[1:3], abs=3)


@pytest.mark.parametrize("content", [b"this is not a video\n" * 20, b""], ids=["text", "empty"])
def test_undecodable_files_raise_video_decode_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "input.mp4"
    path.write_bytes(content)
    for call in (lambda: probe_video(path, "mask_video_url"), lambda: read_frames(path, [0], "mask_video_url")):
        with pytest.raises(InputError) as exc:
            call()
        assert exc.value.type == "video_decode_error"
        assert exc.value.loc == ("mask_video_url",)
        assert "Traceback" not in exc.value.msg and len(exc.value.msg) < 300


# ---------------------------------------------------------------- encoding


def test_lower_crf_gives_larger_files_and_all_qualities_decode(tmp_path: Path) -> None:
    frames = noise_frames()
    sizes = {}
    for quality in QUALITY_CRF:
        encoded = encode_video(frames, tmp_path / f"{quality}.mp4", 8.0, quality=quality)
        assert encoded.file_size == encoded.path.stat().st_size
        assert probe_video(encoded.path).num_frames == len(frames)
        sizes[quality] = encoded.file_size
    assert sizes["low"] < sizes["medium"] < sizes["high"] < sizes["maximum"]


@pytest.mark.parametrize("write_mode", list(WRITE_MODE_PRESET))
def test_every_write_mode_decodes(tmp_path: Path, write_mode: str) -> None:
    encoded = encode_video(iter(noise_frames(5)), tmp_path / "out.mp4", 16.0, write_mode=write_mode)
    info = probe_video(encoded.path)
    assert (info.width, info.height, info.num_frames, info.fps) == (W, H, 5, 16.0)
    assert (encoded.num_frames, encoded.duration) == (5, pytest.approx(5 / 16))


def test_colours_survive_a_round_trip(tmp_path: Path) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 120, 40)]
    path = encode_video([np.full((H, W, 3), c, np.uint8) for c in colours], tmp_path / "c.mp4", 8.0).path
    for colour, frame in zip(colours, iter_frames(path), strict=True):
        assert frame.reshape(-1, 3).mean(0) == pytest.approx(colour, abs=4)


def test_encode_rejects_bad_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        encode_video([np.zeros((47, 64, 3), np.uint8)], tmp_path / "odd.mp4", 8.0)
    with pytest.raises(ValueError, match="all frames"):
        encode_video([np.zeros((48, 64, 3), np.uint8), np.zeros((48, 32, 3), np.uint8)], tmp_path / "mix.mp4", 8.0)
    assert not (tmp_path / "mix.mp4").exists()
    with pytest.raises(ValueError, match="uint8"):
        encode_video([np.zeros((48, 64, 3), np.float32)], tmp_path / "float.mp4", 8.0)
    with pytest.raises(ValueError, match="quality"):
        encode_video([np.zeros((48, 64, 3), np.uint8)], tmp_path / "q.mp4", 8.0, quality="ultra")


def test_frames_zip_holds_one_png_per_frame(tmp_path: Path) -> None:
    path = write_frames_zip(gray_frames(), tmp_path / "frames.zip")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert names == [f"frame_{i:05d}.png" for i in range(N)]
        for name, level in zip(names, LEVELS, strict=True):
            img = Image.open(io.BytesIO(archive.read(name)))
            assert img.size == (W, H) and img.mode == "RGB"
            assert np.asarray(img).mean() == pytest.approx(level, abs=0.01)


# ---------------------------------------------------------------- fetching


def test_local_path_and_file_url_are_used_in_place(tmp_path: Path, png_bytes: bytes) -> None:
    src = tmp_path / "my image.png"
    src.write_bytes(png_bytes)
    workdir = tmp_path / "work"
    assert fetch_to_file(str(src), "image_url", workdir, CTX) == src
    assert fetch_to_file(src.as_uri(), "image_url", workdir, CTX) == src


def test_missing_local_path_is_a_download_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        fetch_to_file(str(tmp_path / "nope.mp4"), "video_url", tmp_path, CTX)
    assert_download_error(exc, "video_url")
    with pytest.raises(InputError) as exc:
        fetch_to_file("ftp://example.com/x.mp4", "video_url", tmp_path, CTX)
    assert_download_error(exc, "video_url")


def test_data_uri_is_decoded_to_a_file(tmp_path: Path, png_bytes: bytes) -> None:
    uri = "data:image/png;base64," + base64.b64encode(png_bytes).decode()
    path = fetch_to_file(uri, "first_frame_url", tmp_path, CTX)
    assert path.parent == tmp_path and path.suffix == ".png"
    assert path.read_bytes() == png_bytes


def test_bad_data_uris_are_download_errors(tmp_path: Path, png_bytes: bytes) -> None:
    big = "data:image/png;base64," + base64.b64encode(png_bytes * 1000).decode()
    cases = [("data:image/png;base64,@@not-base64@@", 2**20), ("data:image/png;base64,", 2**20), (big, 100)]
    for uri, max_bytes in cases:
        with pytest.raises(InputError) as exc:
            fetch_to_file(uri, "first_frame_url", tmp_path, CTX, max_bytes=max_bytes)
        assert_download_error(exc, "first_frame_url")


def test_http_download(tmp_path: Path, http_root: tuple[str, Path], png_bytes: bytes) -> None:
    base, root = http_root
    (root / "clip.png").write_bytes(png_bytes)
    path = fetch_to_file(f"{base}/clip.png?token=abc", "ref_image_urls", tmp_path, CTX)
    assert path.parent == tmp_path and path.suffix == ".png"
    assert path.read_bytes() == png_bytes


def test_http_errors_are_download_errors(tmp_path: Path, http_root: tuple[str, Path], png_bytes: bytes) -> None:
    base, root = http_root
    (root / "big.png").write_bytes(png_bytes)
    with pytest.raises(InputError) as exc:
        fetch_to_file(f"{base}/missing.mp4", "video_url", tmp_path, CTX)
    assert_download_error(exc, "video_url")
    assert "404" in exc.value.msg
    with pytest.raises(InputError) as exc:
        fetch_to_file(f"{base}/big.png", "video_url", tmp_path, CTX, max_bytes=10)
    assert_download_error(exc, "video_url")
    with pytest.raises(InputError) as exc:  # nothing listens on port 9 of loopback (discard), so: refused
        fetch_to_file("http://127.0.0.1:9/x.mp4", "video_url", tmp_path, CTX, timeout_s=5)
    assert_download_error(exc, "video_url")
    assert list(tmp_path.iterdir()) == []  # failed downloads leave nothing behind


def test_the_contexts_own_files_are_consulted_first(tmp_path: Path, png_bytes: bytes) -> None:
    stored = tmp_path / "stored.png"
    stored.write_bytes(png_bytes)
    ctx = JobContext(
        local_files=lambda ref, _workdir, _max_bytes: stored if ref == "http://myserver/files/abc" else None
    )
    assert fetch_to_file("http://myserver/files/abc", "image_url", tmp_path, ctx) == stored


# ---------------------------------------------------------------- images


def test_load_image_keeps_alpha_only_when_transparent(tmp_path: Path) -> None:
    transparent = Image.new("RGBA", (10, 8), (255, 0, 0, 255))
    transparent.putpixel((0, 0), (0, 0, 0, 0))
    transparent.save(tmp_path / "t.png")
    Image.new("RGBA", (10, 8), (0, 255, 0, 255)).save(tmp_path / "opaque.png")
    Image.new("RGB", (10, 8), (0, 0, 255)).save(tmp_path / "photo.jpg", quality=95)
    palette = Image.new("P", (10, 8), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 transparent, but unused
    palette.putpixel((3, 3), 0)
    palette.save(tmp_path / "p2.png", transparency=0)

    assert load_image(str(tmp_path / "t.png"), "ref_image_urls", tmp_path, CTX).mode == "RGBA"
    assert load_image(str(tmp_path / "p2.png"), "ref_image_urls", tmp_path, CTX).mode == "RGBA"
    for name in ("opaque.png", "photo.jpg", "p.png"):
        img = load_image(str(tmp_path / name), "ref_image_urls", tmp_path, CTX)
        assert img.mode == "RGB" and img.size == (10, 8)


def test_text_file_is_an_image_load_error(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello, not an image")
    with pytest.raises(InputError) as exc:
        load_image(str(tmp_path / "notes.png"), "last_frame_url", tmp_path, CTX)
    assert exc.value.type == "image_load_error"
    assert exc.value.loc == ("last_frame_url",)
