"""No connection state lets a client hold a slot past a deadline (``server/api/connections.py``; issue #28).

Each attack opens ``--limit-concurrency`` raw sockets against a real ``vace serve`` on loopback that all do the same
thing: a request whose body was refused unread (401) and then never comes, comes in part, or trickles in slower or
faster than the gap deadline; a keyed request whose body stalls; headers one byte at a time; a keep-alive
connection idle or trickling its next request after a complete exchange; a client that stops taking a response.
Every one of those sockets must be closed by the server within its deadline, and a normal request must succeed
again within that deadline (while they hold their slots, uvicorn answers everyone 503). Legitimate slow clients
(a keyed upload trickling in steadily, a keep-alive client pausing between requests) are not cut off.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from server_fixtures import ServeProcess, server_weights  # noqa: F401

pytestmark = pytest.mark.serial  # deadlines and latencies: run with no other test beside it (Makefile)

KEY = "deadline-key-1234"
POSE_QUEUE = "/queue/fal-ai/wan-vace-14b/pose"
LIMIT = 5  # --limit-concurrency: the attack sockets of each test
GAP_S, HEADER_S, UNREAD_S = 2.0, 3.0, 4.0  # --read-timeout-s, --header-timeout-s, --unread-body-timeout-s
SLACK_S = 2.0  # a loaded two-core machine's lateness on top of a deadline
DEADLINES = {"gap": GAP_S, "header": HEADER_S, "unread": UNREAD_S}
BIG_FILE = 16 * 1024**2  # larger than the kernel's socket buffers on loopback (4 MiB), so a stalled reader blocks


@pytest.fixture(scope="module")
def server(server_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """A keyed server with short deadlines and a keep-alive timeout long enough never to be what closes a socket."""
    flags = [
        "--limit-concurrency",
        str(LIMIT),
        "--read-timeout-s",
        str(GAP_S),
        "--header-timeout-s",
        str(HEADER_S),
        "--unread-body-timeout-s",
        str(UNREAD_S),
        "--keep-alive-timeout-s",
        "60",
    ]
    running = ServeProcess(
        server_weights, tmp_path_factory.mktemp("deadlines") / "data", api_key=KEY, extra_args=flags
    ).start()
    yield running
    running.stop()


def _request(method: str, path: str, headers: str = "", length: int | None = None) -> bytes:
    declared = f"Content-Type: application/json\r\nContent-Length: {length}\r\n" if length is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}{declared}\r\n".encode()


REFUSED = _request("POST", POSE_QUEUE, length=100_000)  # no key: 401 before any of the body is read
KEYED = _request("POST", POSE_QUEUE, f"Authorization: Key {KEY}\r\n", length=1000)  # the app waits for the body
HEALTH = _request("GET", "/health")
SLOW_HEADERS = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000


@dataclass(frozen=True)
class Attack:
    """What each attack socket does: send ``opening`` (and read the whole answer when ``answered``) and ``then``,
    then send ``drip`` one byte every ``every_s`` (silence for an empty one). ``deadline`` names the one that must
    close it, counted from there."""

    opening: bytes
    answered: bool
    then: bytes
    drip: bytes
    every_s: float
    deadline: str


ATTACKS = {
    "refused body never sent": Attack(REFUSED, True, b"", b"", 0, "gap"),
    "refused body in part, then silence": Attack(REFUSED + b'{"prompt": "', True, b"", b"", 0, "gap"),
    "refused body after the 401, one byte, then silence": Attack(REFUSED, True, b"x", b"", 0, "gap"),
    "refused body after the 401, slower than the gap": Attack(REFUSED, True, b"", b"x" * 99, 1.5 * GAP_S, "gap"),
    "refused body after the 401, faster than the gap": Attack(REFUSED, True, b"x", b"x" * 99, 0.3 * GAP_S, "unread"),
    "keyed body never sent": Attack(KEYED, False, b"", b"", 0, "gap"),
    "keyed body in part, then silence": Attack(KEYED, False, b'{"prompt": "', b"", 0, "gap"),
    "keyed body slower than the gap": Attack(KEYED, False, b"{", b"x" * 99, 1.5 * GAP_S, "gap"),
    "headers byte by byte (slowloris)": Attack(b"", False, b"", SLOW_HEADERS, 0.3 * GAP_S, "header"),
    "keep-alive idle after an exchange": Attack(HEALTH, True, b"", b"", 0, "gap"),
    "keep-alive, next headers byte by byte": Attack(HEALTH, True, b"", SLOW_HEADERS, 0.3 * GAP_S, "header"),
}


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body), or what came before the server closed."""
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


def _seconds_until_closed(sock: socket.socket, drip: bytes, every_s: float, started: float, give_up_s: float) -> float:
    """Send ``drip`` a byte at a time until the server closes ``sock``; seconds from ``started`` until it did (inf:
    it never did)."""
    sent = 0
    while time.monotonic() - started < give_up_s:
        readable, _, _ = select.select([sock], [], [], every_s if drip else give_up_s)
        if readable:
            try:
                if sock.recv(65536) == b"":
                    return time.monotonic() - started
            except ConnectionResetError:
                return time.monotonic() - started
            continue
        if drip:
            try:
                sock.send(drip[sent % len(drip) : sent % len(drip) + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
            sent += 1
    return math.inf


def _occupy(port: int, attack: Attack) -> list[tuple[socket.socket, float]]:
    """``LIMIT`` sockets each done with ``attack``'s opening, one after the other (so the server takes each request
    in before the next socket counts against the limit), with the time each deadline started."""
    opened = []
    for _ in range(LIMIT):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(attack.opening)
        if attack.answered:
            answer = _read_response(sock)
            assert answer.startswith((b"HTTP/1.1 401", b"HTTP/1.1 200", b"HTTP/1.1 503")), answer[:100]
        else:
            time.sleep(0.05)
        sock.sendall(attack.then)
        opened.append((sock, time.monotonic()))
    return opened


def _served(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _seconds_until_served(url: str, give_up_s: float) -> float:
    """Seconds until a normal request gets its 200 (503 while the attack sockets hold every slot)."""
    started = time.monotonic()
    while time.monotonic() - started < give_up_s:
        if _served(url):
            return time.monotonic() - started
        time.sleep(0.05)
    return math.inf


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_socket_is_closed_within_its_deadline(server: ServeProcess, name: str) -> None:
    attack = ATTACKS[name]
    bound = DEADLINES[attack.deadline] + SLACK_S
    opened = _occupy(server.port, attack)
    assert not _served(server.url), "the attack sockets do not hold every slot"
    blocked_at = time.monotonic()
    closed_after: list[float] = []

    def watch(sock: socket.socket, started: float) -> None:
        with sock:
            closed_after.append(_seconds_until_closed(sock, attack.drip, attack.every_s, started, bound + 2))

    threads = [threading.Thread(target=watch, args=pair, daemon=True) for pair in opened]
    for thread in threads:
        thread.start()
    served_after = time.monotonic() - blocked_at + _seconds_until_served(server.url, give_up_s=bound + 2)
    for thread in threads:
        thread.join(bound + 10)
    assert len(closed_after) == LIMIT
    assert max(closed_after) <= bound, f"{name}: closed after {sorted(closed_after)} s, deadline {bound} s"
    assert served_after <= bound, f"{name}: a normal request waited {served_after:.1f} s"


def test_a_client_that_stops_taking_a_response_is_closed_after_the_gap(server: ServeProcess) -> None:
    """Readers that take none of a big file: the server, its writes paused, closes them after the gap (without
    first sending what they never take), and a normal request gets through again."""
    headers = {"authorization": f"Key {KEY}"}
    urls = httpx.post(f"{server.url}/storage/upload/initiate", headers=headers, json={"file_name": "big.bin"}).json()
    assert httpx.put(urls["upload_url"], content=b"\0" * BIG_FILE, timeout=60).status_code == 200
    request = _request("GET", urlsplit(urls["file_url"]).path)
    readers = []
    for _ in range(LIMIT):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(request)
        readers.append(sock)
        time.sleep(0.05)
    assert not _served(server.url), "the stalled readers do not hold every slot"
    stalled = time.monotonic()  # every reader holds a slot, its response's writes paused
    served_after = _seconds_until_served(server.url, give_up_s=GAP_S + SLACK_S + 2)
    # Reading resumes a reader the server has not closed yet; on a loaded machine the last closes come later than
    # the first, which freed the slot for the normal request. Each is closed by the gap (and slack) from now on.
    time.sleep(max(0.0, stalled + GAP_S + SLACK_S - time.monotonic()))
    for sock in readers:  # now read what comes: a server that closed sent less than the file
        received = 0
        with sock, contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1024 * 1024):
                received += len(chunk)
        assert received < BIG_FILE
    assert served_after <= GAP_S + SLACK_S, f"a normal request waited {served_after:.1f} s"


def test_slow_but_steady_clients_are_not_cut_off(server: ServeProcess) -> None:
    """A keyed upload trickling in for longer than every overall deadline, one byte within each gap, completes;
    a keep-alive client pausing under the gap between requests keeps its connection."""
    headers = {"authorization": f"Key {KEY}"}
    upload_url = httpx.post(f"{server.url}/storage/upload/initiate", headers=headers, json={}).json()["upload_url"]
    body = b"0123456789"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_request("PUT", urlsplit(upload_url).path, f"Content-Length: {len(body)}\r\n"))
        started = time.monotonic()
        for byte in body:
            time.sleep(0.5 * GAP_S)
            sock.sendall(bytes([byte]))
        assert time.monotonic() - started > max(HEADER_S, UNREAD_S)
        assert _read_response(sock).startswith(b"HTTP/1.1 200")
        for _ in range(4):  # the same connection, kept alive
            time.sleep(0.6 * GAP_S)
            sock.sendall(HEALTH)
            assert _read_response(sock).startswith(b"HTTP/1.1 200")
