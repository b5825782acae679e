"""The server probed as an attacker would: one test per finding of the security review (uploads served as active
content, bodies read before auth, multipart totals, connection limits, hosts, job ownership, revoked keys,
malformed credentials, what is public, file modes). Live servers on loopback, tiny weights.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from diffusers import WanVACETransformer3DModel
from server_fixtures import (  # noqa: F401
    SMALL_JOB,
    ServeProcess,
    ThreadServer,
    control_videos,
    free_port,
    server_weights,
    wait_until,
)

from server.api.auth import Auth
from server.app import create_app
from server.config import Settings
from server.files import store as files_module
from server.files.store import LocalFileStore

pytestmark = pytest.mark.serial  # deadlines and latencies: run with no other test beside it (Makefile)

KEY_A, KEY_B, ADMIN = "key-a-1234", "key-b-5678", "admin-key-9"
POSE_QUEUE = "/queue/fal-ai/wan-vace-14b/pose"
REQUESTS = "/queue/fal-ai/wan-vace-14b/requests"


def auth_header(key: str) -> dict[str, str]:
    return {"authorization": f"Key {key}"}


@pytest.fixture(scope="module")
def keyed(server_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    config = Settings(
        weights_dir=server_weights,
        data_dir=tmp_path_factory.mktemp("sec") / "data",
        port=free_port(),
        api_keys=frozenset({KEY_A, KEY_B}),
        admin_keys=frozenset({ADMIN}),
        max_upload_bytes=1000,
        prompt_expander="openai",
        expander_url="http://10.1.2.3:11434/v1",
        expander_model="secret-model",
    )
    with ThreadServer(config) as running:
        yield running


def upload(server: ThreadServer, name: str, content_type: str, data: bytes, key: str = KEY_A) -> str:
    urls = httpx.post(
        f"{server.url}/storage/upload/initiate",
        headers=auth_header(key),
        json={"file_name": name, "content_type": content_type},
    ).json()
    assert httpx.put(urls["upload_url"], content=data).status_code == 200
    return urls["file_url"]


# 1 ------------------------------------------------------------------------------------------ stored XSS


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("x.html", "text/html"),
        ("x.svg", "image/svg+xml"),
        ("x.xhtml", "application/xhtml+xml"),
        ("x", "text/html"),
        ("x.js", "text/javascript"),
        ("x.xml", "application/xml"),
        ("page.mp4.html", "video/mp4"),
    ],
)
def test_uploads_are_never_served_as_active_content(keyed: ThreadServer, name: str, content_type: str) -> None:
    url = upload(keyed, name, content_type, b"<script>alert(localStorage.length)</script>")
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == "sandbox"


def test_passive_media_keep_their_type_with_the_same_protections(keyed: ThreadServer) -> None:
    for name, expected in (("clip.mp4", "video/mp4"), ("a.png", "image/png"), ("frames.zip", "application/zip")):
        response = httpx.get(upload(keyed, name, expected, b"\x00" * 10))
        assert response.headers["content-type"] == expected
        assert "content-disposition" not in response.headers  # plays inline in the playground
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == "sandbox"


# 2 ---------------------------------------------------------------------------- bodies read before auth


def _read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (head and its Content-Length body) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _send_chunked(port: int, path: str, total: int, headers: str = "") -> bytes:
    """POST a chunked JSON body of ``total`` bytes without a key; returns the response head the server sent
    (as soon as it answers: a server that waits for the whole body first never answers within the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n{headers}\r\n".encode()
        )
        chunk = b"%x\r\n%s\r\n" % (1024 * 1024, b'{"prompt": "' + b"A" * (1024 * 1024 - 12))
        sent = 0
        try:
            sock.sendall(chunk)  # the first MiB, then look for an early answer while sending the rest
            sent += 1024 * 1024
            sock.settimeout(0.05)
            while sent < total:
                try:
                    head = sock.recv(4096)
                    if head:
                        return head
                except TimeoutError:
                    pass
                sock.sendall(b"%x\r\n%s\r\n" % (1024 * 1024, b"A" * 1024 * 1024))
                sent += 1024 * 1024
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(20)
        return sock.recv(4096)


def test_unauthenticated_bodies_are_refused_before_they_are_read(server_weights: Path, tmp_path: Path) -> None:
    server = ServeProcess(server_weights, tmp_path / "data", api_key=KEY_A).start()
    try:
        assert server.proc is not None
        fifty_mib = 50 * 1024 * 1024
        targets = [
            POSE_QUEUE,
            "/fal-ai/wan-vace-14b/pose",
            "/storage/upload/initiate",
            "/files/upload",
            "/storage/upload/" + "A" * 32 + "/complete",
            f"{REQUESTS}/x/cancel",
        ]
        for path in targets:
            head = _send_chunked(server.port, path, 4 * 1024 * 1024)
            assert head.split(b"\r\n")[0] in (
                b"HTTP/1.1 401 Unauthorized",
                b"HTTP/1.1 404 Not Found",
                b"HTTP/1.1 405 Method Not Allowed",
            ), (path, head[:200])
        before = _rss_kib(server.proc.pid)
        heads: list[bytes] = []
        threads = [
            threading.Thread(target=lambda p=p: heads.append(_send_chunked(server.port, p, fifty_mib)))
            for p in (POSE_QUEUE, "/storage/upload/" + "B" * 32 + "/complete") * 2
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(heads) == 4 and all(h.startswith((b"HTTP/1.1 401", b"HTTP/1.1 404")) for h in heads), heads
        grown_mib = (_rss_kib(server.proc.pid) - before) / 1024
        assert grown_mib < 24, f"RSS grew by {grown_mib:.0f} MiB for 4 refused 50 MiB bodies"
        # With a key, a declared length over the JSON limit is refused without reading, in fal's shape.
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(
                f"POST {POSE_QUEUE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Key {KEY_A}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {fifty_mib}\r\n\r\n{{".encode()
            )
            answer = _read_response(sock)
        assert answer.startswith(b"HTTP/1.1 413") and b'"type":"request_too_large"' in answer, answer
    finally:
        server.stop()


# 3 ----------------------------------------------------------------------------------- multipart totals


def test_multipart_parts_count_together_and_complete_needs_the_exact_parts(keyed: ThreadServer) -> None:
    urls = httpx.post(
        f"{keyed.url}/storage/upload/initiate-multipart", headers=auth_header(KEY_A), json={"file_name": "big.bin"}
    ).json()
    base = urls["upload_url"]
    folder = keyed.config.uploads_dir / base.rsplit("/", 1)[1]
    assert httpx.put(f"{base}/1", content=b"1" * 600).status_code == 200
    assert httpx.put(f"{base}/2", content=b"2" * 600).status_code == 413  # 1200 > 1000 in total
    assert sorted(p.name for p in folder.iterdir()) == ["part-00001", "upload.json"]  # the refused part is gone
    assert httpx.put(f"{base}/2", content=b"2" * 300).status_code == 200
    assert httpx.put(f"{base}/3", content=b"3" * 200).status_code == 413
    for listed in ([1, 1, 2], [1], [1, 2, 3], []):
        body = {"parts": [{"partNumber": n} for n in listed]}
        r = httpx.post(f"{base}/complete", json=body)
        assert r.status_code == 400 and isinstance(r.json()["detail"], str), (listed, r.text)
    assert httpx.post(f"{base}/complete", json={"parts": [{"partNumber": 2}, {"partNumber": 1}]}).status_code == 200
    assert httpx.get(urls["file_url"]).content == b"1" * 600 + b"2" * 300


def test_part_numbers_are_capped_and_a_long_complete_is_refused_by_the_cap(keyed: ThreadServer) -> None:
    """50,000 part numbers (under the 1 MiB body limit) are refused by the schema, naming the field, before the
    store compares any of them; part numbers outside 1..10000 likewise, in a PUT's path or a complete's list."""
    for initiate in ("/storage/upload/initiate-multipart", "/files/upload/multipart"):
        urls = httpx.post(
            f"{keyed.url}{initiate}",
            headers=auth_header(KEY_A),
            json={"file_name": "p.bin"},
        ).json()
        base = urls["upload_url"] if "upload_url" in urls else f"{urls['access_url']}/multipart/{urls['uploadId']}"
        assert httpx.put(f"{base}/1", content=b"1").status_code == 200
        body = b'{"parts": [' + b",".join(b'{"partNumber":%d}' % (n % 10_000 + 1) for n in range(50_000)) + b"]}"
        assert len(body) < 1024**2
        r = httpx.post(f"{base}/complete", content=body, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "parts"], r.text[:300]
        assert r.json()["detail"][0]["type"] == "too_long"
        r = httpx.post(f"{base}/complete", json={"parts": [{"partNumber": 1}, {"partNumber": 10_001}]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "parts", 1, "partNumber"], r.text
        for n in (0, 10_001):
            r = httpx.put(f"{base}/{n}", content=b"x")
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "part_number"], r.text
        assert httpx.put(f"{base}/10000", content=b"x").status_code == 200  # the last number there is
        assert (
            httpx.post(
                f"{base}/complete",
                json={"parts": [{"partNumber": 10_000}, {"partNumber": 1}]},
            ).status_code
            == 200
        )


def test_an_upload_url_takes_one_file_even_from_racing_puts(keyed: ThreadServer) -> None:
    """A PUT still streaming when another PUT to the same URL finished is refused (409) and changes nothing: the
    file a job may already have checked stays what it was."""
    urls = httpx.post(f"{keyed.url}/storage/upload/initiate", headers=auth_header(KEY_A), json={}).json()
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"a" * 10
        release.wait(30)
        yield b"b" * 500

    late: list[httpx.Response] = []
    racer = threading.Thread(target=lambda: late.append(httpx.put(urls["upload_url"], content=slow_body(), timeout=60)))
    racer.start()
    time.sleep(0.3)
    assert httpx.put(urls["upload_url"], content=b"first").status_code == 200
    release.set()
    racer.join(60)
    assert late[0].status_code == 409 and "already" in late[0].json()["detail"]
    assert httpx.get(urls["file_url"]).content == b"first"
    assert httpx.put(urls["upload_url"], content=b"third").status_code == 404  # used up


def test_upload_urls_expire(keyed: ThreadServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_module, "UPLOAD_URL_TTL_S", 0.5)
    urls = httpx.post(f"{keyed.url}/storage/upload/initiate", headers=auth_header(KEY_A), json={}).json()
    time.sleep(0.7)
    assert httpx.put(urls["upload_url"], content=b"late").status_code == 404


# 4 ------------------------------------------------------------------------------------ connection hygiene


def test_idle_and_slow_header_connections_are_dropped(tmp_path: Path, server_weights: Path) -> None:
    config = Settings(
        weights_dir=server_weights,
        data_dir=tmp_path / "data",
        port=free_port(),
        header_timeout_s=1.0,
        keep_alive_timeout_s=30,
    )
    with ThreadServer(config) as server:
        idle = socket.create_connection(("127.0.0.1", config.port))
        slow = socket.create_connection(("127.0.0.1", config.port))
        started = time.monotonic()
        for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n":  # never finishes its headers
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - started > 4:
                break
        for sock in (idle, slow):
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):  # a reset closes it too
                assert sock.recv(100) == b""  # closed by the server
            sock.close()
        assert time.monotonic() - started < 8
        # A client that keeps its connection between requests is not cut off by the header deadline.
        with httpx.Client(base_url=server.url) as client:
            for _ in range(3):
                assert client.get("/health").status_code == 200
                time.sleep(0.6)


# 5 ----------------------------------------------------------------------------------------------- hosts


def test_foreign_hosts_are_refused_on_an_auth_off_server(tmp_path: Path, server_weights: Path) -> None:
    config = Settings(
        weights_dir=server_weights, data_dir=tmp_path / "data", port=free_port(), allowed_hosts=("studio.lan",)
    )
    with ThreadServer(config) as server:
        for host in ("127.0.0.1", f"127.0.0.1:{config.port}", "localhost", "[::1]:8000", "studio.lan:80"):
            assert httpx.get(f"{server.url}/health", headers={"host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
            r = httpx.post(f"{server.url}/storage/upload/initiate", json={}, headers={"host": host})
            assert r.status_code == 400 and "--allowed-host" in r.json()["detail"], host
    assert Settings(weights_dir=tmp_path, api_keys=frozenset({"k"})).accepted_hosts() is None  # keyed: any
    assert "evil.example" not in (Settings(weights_dir=tmp_path).accepted_hosts() or {"evil.example"})
    assert Settings(weights_dir=tmp_path, allowed_hosts=("*",)).accepted_hosts() is None
    keyed_listed = Settings(weights_dir=tmp_path, api_keys=frozenset({"k"}), allowed_hosts=("a.example",))
    assert keyed_listed.accepted_hosts() is not None and "a.example" in keyed_listed.accepted_hosts()


# 6 ------------------------------------------------------------------------------------------ job ownership


def test_other_keys_cannot_see_or_cancel_a_job(keyed: ThreadServer) -> None:
    body = {"prompt": "x", "video_url": "data:video/mp4;base64,AAAA", "num_frames": 17, "num_inference_steps": 2}
    request_id = httpx.post(f"{keyed.url}{POSE_QUEUE}", json=body, headers=auth_header(KEY_A)).json()["request_id"]
    paths = [
        ("GET", f"{REQUESTS}/{request_id}/status"),
        ("GET", f"{REQUESTS}/{request_id}"),
        ("GET", f"{REQUESTS}/{request_id}/status/stream"),
        ("PUT", f"{REQUESTS}/{request_id}/cancel"),
    ]
    for method, path in paths:
        r = httpx.request(method, f"{keyed.url}{path}", headers=auth_header(KEY_B))
        assert r.status_code == 404 and request_id in r.json()["detail"], (path, r.text)
    for key in (KEY_A, ADMIN):
        r = httpx.get(f"{keyed.url}{REQUESTS}/{request_id}/status", headers=auth_header(key))
        assert r.status_code in (200, 202), key
    wait_until(
        lambda: httpx.get(f"{keyed.url}{REQUESTS}/{request_id}/status", headers=auth_header(KEY_A)).status_code == 200,
        120,
        "the job to end",
    )
    assert httpx.get(f"{keyed.url}{REQUESTS}/{request_id}", headers=auth_header(ADMIN)).status_code == 422


# 7 --------------------------------------------------------------------------------------- revoked keys


def test_a_revoked_keys_upload_token_and_upload_urls_stop_working(server_weights: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    def config(keys: frozenset[str]) -> Settings:
        return Settings(weights_dir=server_weights, data_dir=data_dir, port=free_port(), api_keys=keys)

    with ThreadServer(config(frozenset({KEY_A, KEY_B}))) as server:
        tokens = {
            k: httpx.post(f"{server.url}/storage/auth/token", headers=auth_header(k)).json()["token"]
            for k in (KEY_A, KEY_B)
        }
        upload_urls = {
            k: httpx.post(f"{server.url}/storage/upload/initiate", headers=auth_header(k), json={}).json()["upload_url"]
            for k in (KEY_A, KEY_B)
        }
    with ThreadServer(config(frozenset({KEY_B}))) as server:  # KEY_A removed; same data directory and secret

        def cdn(key: str) -> int:
            return httpx.post(
                f"{server.url}/files/upload", content=b"x", headers={"authorization": f"Bearer {tokens[key]}"}
            ).status_code

        def put(key: str) -> int:
            url = upload_urls[key].replace(upload_urls[key].split("/storage/")[0], server.url)
            return httpx.put(url, content=b"x").status_code

        assert (cdn(KEY_A), put(KEY_A)) == (401, 404)
        assert (cdn(KEY_B), put(KEY_B)) == (200, 200)
    # A token names its key: another key's token, or one signed under another secret, is not accepted.
    auth = Auth(frozenset({KEY_A, KEY_B}), b"s" * 32)
    token = auth.issue_upload_token(auth.from_key(f"Key {KEY_A}"), "http://x")["token"]  # type: ignore[arg-type]
    assert auth.from_key_or_token(f"Bearer {token}").key_id == auth.from_key(f"Key {KEY_A}").key_id  # type: ignore[union-attr]
    assert Auth(frozenset({KEY_A}), b"t" * 32).from_key_or_token(f"Bearer {token}") is None


# 8 ------------------------------------------------------------------------------- malformed credentials


@pytest.mark.parametrize(
    "value",
    [
        "Bearer " + "9" * 5000 + ".x",
        "Bearer ²",
        "Bearer ²." + "a" * 64,
        "Bearer 99999999999999999999." + "a" * 64,
        "Bearer",
        "Bearer  ",
        "Bearer 1.2.3",
        "Key",
        "Key " + "x" * 20000,
        "Key \xff\xfe",
        "\xff",
        "Basic Zm9vOmJhcg==",
    ],
)
def test_malformed_credentials_are_401_never_500(keyed: ThreadServer, value: str) -> None:
    for path in ("/files/upload", POSE_QUEUE):  # raw bytes: HTTP clients refuse to send some of these
        with socket.create_connection(("127.0.0.1", keyed.config.port), timeout=20) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
                + b"Authorization: "
                + value.encode("latin-1")
                + b"\r\nContent-Length: 2\r\n\r\n{}"
            )
            answer = _read_response(sock)
        assert answer.startswith(b"HTTP/1.1 401") and b'{"detail":"Missing or invalid' in answer, (path, answer)


# 9 ----------------------------------------------------------------------------------- what is public


def test_ready_shows_internals_only_with_a_key(keyed: ThreadServer) -> None:
    public = httpx.get(f"{keyed.url}/ready")
    assert public.status_code == 200 and public.json()["ready"] is True
    assert set(public.json()) == {"ready", "endpoints"}
    for internal in ("10.1.2.3", "secret-model", str(keyed.config.weights_dir), "devices", "cpu"):
        assert internal not in public.text, internal
    keyed_view = httpx.get(f"{keyed.url}/ready", headers=auth_header(KEY_B)).json()
    assert keyed_view["prompt_expansion"]["url"] == "http://10.1.2.3:11434/v1" and "devices" in keyed_view
    # The fleet view (host names, other keys' job ids) is an admin's.
    admin_view = httpx.get(f"{keyed.url}/ready", headers=auth_header(ADMIN)).json()
    assert admin_view["workers"] and all(w["id"].startswith(socket.gethostname() + ":") for w in admin_view["workers"])
    assert "workers" not in keyed_view and socket.gethostname() + ":" not in json.dumps(keyed_view)
    metrics = httpx.get(f"{keyed.url}/metrics")  # public by decision: counts and timings, no URLs, paths or ids
    assert metrics.status_code == 200 and "vace_queue_depth" in metrics.text and "10.1.2.3" not in metrics.text


# 10 --------------------------------------------------------------------------------------------- modes


def test_the_data_directory_is_owner_only_whatever_the_umask(server_weights: Path, tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        config = Settings(weights_dir=server_weights, data_dir=tmp_path / "data", port=free_port())
        with ThreadServer(config) as server:
            file_url = upload(server, "clip.mp4", "video/mp4", b"\x00" * 10)  # type: ignore[arg-type]
            store = LocalFileStore(config.files_dir, config.uploads_dir, 100)
            src = tmp_path / "made-by-ffmpeg.mp4"
            src.write_bytes(b"x")
            adopted = config.files_dir / store.adopt(src, "video.mp4")
    finally:
        os.umask(old)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    token_dir = config.files_dir / file_url.split("/files/")[1].split("/")[0]
    for folder in (config.data_dir, config.files_dir, config.uploads_dir, config.work_dir, token_dir, adopted.parent):
        assert mode(folder) == 0o700, folder
    db_files = [p for p in config.data_dir.iterdir() if p.name.startswith("jobs.sqlite3")]
    assert len(db_files) >= 2  # the database and its lock (and -wal/-shm while open)
    for path in (*db_files, config.data_dir / "secret", token_dir / "clip.mp4", adopted):
        assert mode(path) == 0o600, path


# 11 -------------------------------------------------------------------------------------------- error bodies


@pytest.mark.parametrize(
    "text", ["/srv/vace/data/work/3f9a: permission denied", "connection to db.internal:5432 refused for role vace"]
)
def test_an_unexpected_error_reaches_the_client_as_an_id_not_its_text(
    keyed: ThreadServer,
    control_videos: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    text: str,
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(text)

    monkeypatch.setattr(WanVACETransformer3DModel, "forward", broken)
    video = "data:video/mp4;base64," + base64.b64encode(control_videos["pose"].read_bytes()).decode()
    body = {"prompt": "x", "video_url": video, **SMALL_JOB}
    request_id = httpx.post(f"{keyed.url}{POSE_QUEUE}", json=body, headers=auth_header(KEY_A), timeout=60).json()[
        "request_id"
    ]
    status = wait_until(
        lambda: (
            (
                s := httpx.get(
                    f"{keyed.url}{REQUESTS}/{request_id}/status",
                    params={"logs": 1},
                    headers=auth_header(KEY_A),
                    timeout=60,
                )
            ).status_code
            == 200
            and s
        ),
        120,
        "the job to fail",
    )
    result = httpx.get(f"{keyed.url}{REQUESTS}/{request_id}", headers=auth_header(KEY_A), timeout=60)
    assert result.status_code == 500 and result.json()["error_type"] == "internal_error"
    error_id = re.fullmatch(r"internal error ([0-9a-f]{12}): .*", result.json()["detail"])[1]  # type: ignore[index]
    for answer in (status, result):  # neither the body nor the job's log lines carry the exception's text
        assert text not in answer.text and "RuntimeError" not in answer.text
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and any(r.exc_info and text in str(r.exc_info[1]) for r in logged)  # the operator's log has it


# 12 ----------------------------------------------------------------------------- cross-site requests, CORS


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ],
)
def test_json_routes_refuse_other_content_types_without_an_authorization_header(
    server_weights: Path,
    tmp_path: Path,
    content_type: str | None,
) -> None:
    """What a page on another site can send without a CORS preflight (a "simple" request: text/plain, a form, or
    a typeless Blob) is refused by our own check on an auth-off server, whatever FastAPI's version does."""
    config = Settings(weights_dir=server_weights, data_dir=tmp_path / "data", port=free_port())
    body = b'{"prompt": "x", "video_url": "data:video/mp4;base64,AAAA", "num_frames": 500}'
    with ThreadServer(config) as server, socket.create_connection(("127.0.0.1", config.port), timeout=20) as sock:
        typed = f"Content-Type: {content_type}\r\n" if content_type else ""
        sock.sendall(
            f"POST {POSE_QUEUE} HTTP/1.1\r\nHost: 127.0.0.1\r\n{typed}Content-Length: {len(body)}\r\n"
            "Origin: https://evil.example\r\n\r\n".encode()
            + body
        )
        answer = _read_response(sock)
        assert answer.startswith(b"HTTP/1.1 415"), answer
        (item,) = json.loads(answer.partition(b"\r\n\r\n")[2])["detail"]
        assert item["loc"] == ["header", "content-type"] and item["type"] == "unsupported_media_type"
        assert (
            httpx.post(
                f"{server.url}{POSE_QUEUE}",
                content=body,  # JSON, or any type with the header: parsed
                headers={"content-type": "application/json"},
            ).json()["detail"][0]["loc"][-1]
            == "num_frames"
        )
        with_key = httpx.post(
            f"{server.url}{POSE_QUEUE}",
            content=body,
            headers={"content-type": content_type or "", "authorization": "Key any"},
        )
        assert with_key.json()["detail"][0]["loc"][-1] == "num_frames"


def test_cors_origins_without_keys_are_warned_about_at_start(
    server_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    origin = "https://studio.example"

    def warnings(name: str, **settings: Any) -> list[str]:
        caplog.clear()
        app = create_app(Settings(weights_dir=server_weights, data_dir=tmp_path / name, **settings))
        app.state.store.close()
        return [
            r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "--cors-origin" in r.getMessage()
        ]

    (warning,) = warnings("open", cors_origins=(origin,))
    assert origin in warning and "without an API key" in warning
    assert warnings("keyed", cors_origins=(origin,), api_keys=frozenset({KEY_A})) == []
    assert warnings("closed") == []
