"""Schema-driven fuzzing of every route in the live server's ``/openapi.json`` (schemathesis).

The hand-written API tests check the cases someone thought of; this one lets schemathesis generate schema-valid
and schema-violating requests for every operation the server documents, and checks two properties of every answer:

- the server never answers 5xx (an unhandled exception, or a job that crashed instead of failing on its input);
- every error (4xx) is fal-shaped: a JSON object with ``detail``, which for 422 is fal's list of
  ``{loc: [...], msg: str, type: str}`` and otherwise a message string or such a list.

Purely random input stops at the first check (a random ``video_url`` is not a URL, a random request id names no
job), so the generated cases are steered part of the time: media fields get URLs that pass the schema and the
scheme check but fail later (hosts that do not resolve, private addresses, undecodable data URIs, missing files of
ours), which queues real jobs that the workers then fail; path parameters get the request ids, upload ids and file
keys the server handed out earlier in the run, so status, result, stream, cancel and the upload routes see real
objects too.

The server runs in-process on the session's tiny weights, auth off, on a fresh data directory. It must never reach
the network, yet generated URLs name arbitrary hosts: while the module runs, ``socket.getaddrinfo`` resolves
loopback only, so every other host fails to resolve and the server answers its download error (a 422), which is
the behaviour under test.

schemathesis's pytest plugin (``schemathesis.pytest.from_fixture``) does not run under the pytest this project uses
(it sets ``Function._nodeid``, which pytest 9.2 no longer has), so the test walks the operations itself and runs one
derandomized, unshrunk Hypothesis search per operation and generation mode through the documented
``operation.as_strategy(mode)``; every failing operation is reported, not only the first. A second test sends
each documented path the methods it does not declare, which those strategies never do.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.schemas import APIOperation, BaseSchema
from server_fixtures import ThreadServer, free_port, server_weights  # noqa: F401

from server.config import Settings

# Routes whose successful answers are not JSON by design: they still must not fail, and their errors are fal's.
NOT_JSON = {
    "/metrics",
    "/queue/{owner}/{alias}/requests/{request_id}/status/stream",
    "/files/{token}/{name}",
    "/queue/{owner}/{alias}/requests/{request_id}/preview",
}
CALL_TIMEOUT_S = 120  # a sync run whose generated input happens to be valid runs a real (tiny) generation
FUZZ_SETTINGS = settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)
MEDIA_FIELDS = ("video_url", "first_frame_url", "last_frame_url")
# Media refs that pass the schema and the scheme check, and fail only when a job fetches or decodes them.
MEDIA_REFS = (
    "http://media.invalid/clip.mp4",  # does not resolve
    "http://127.0.0.1:9/clip.mp4",  # loopback: refused as non-public before any connection
    "https://[::ffff:10.0.0.1]/clip.mp4",  # private, written as IPv4-mapped IPv6
    "http://:80/clip.mp4",  # no host
    "data:video/mp4;base64,AAAAIGZ0eXBpc29tAAACAGlzb21pc28y",  # a few bytes of an MP4 header, no video
    "data:image/png;base64,!!!!",  # invalid base64
    "data:,",  # empty
    "{base}/files/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/missing.mp4",  # our own file URL, no such file
)
WEBHOOKS = ("http://hooks.invalid/done", "http://127.0.0.1:9/hook")
# The base endpoint's path. Its body without a video is text-to-video, which needs no media at all: a valid case
# would be a whole real generation (81 frames at 832x480 by default), and a few of them queued would hold the one
# worker for longer than the sync calls wait. Such a case gets a first frame that fails to fetch, so its job fails
# on its input as every other case's does.
BASE_ENDPOINT = re.compile(r"(/queue)?/[^/{}]+/[^/{}]+")
PATH_KEYS = {"owner", "alias", "request_id", "upload_id", "token", "name"}  # path parameters that name an object


@dataclass
class Seen:
    """What the server handed out during the run, for path parameters to name real objects."""

    objects: list[dict[str, str]] = field(default_factory=list)
    """Path parameters naming one object: a job (owner, alias, request_id), an upload (upload_id, and token and
    name for fal-client's multipart uploads) or a file (token, name)."""

    def add(self, item: dict[str, str]) -> None:
        if item not in self.objects:
            self.objects.append(item)

    def record(self, path: str, response: schemathesis.Response) -> None:
        """Remember the objects an answer names: its job (``x-fal-request-id``), upload ids and file keys."""
        for request_id in response.headers.get("x-fal-request-id", []):
            owner, alias = path.removeprefix("/queue/").strip("/").split("/")[:2]
            self.add({"owner": owner, "alias": alias, "request_id": request_id})
        if response.status_code != 200 or "application/json" not in response.headers.get("content-type", []):
            return
        body = response.json()
        if not isinstance(body, dict):
            return
        for key in ("file_url", "access_url"):
            if isinstance(body.get(key), str):
                token, name = urlsplit(body[key]).path.split("/")[-2:]
                self.add({"token": token, "name": name})
                if isinstance(body.get("uploadId"), str):
                    self.add({"upload_id": body["uploadId"], "token": token, "name": name})
        if isinstance(body.get("upload_url"), str):
            self.add({"upload_id": body["upload_url"].rsplit("/", 1)[-1]})

    def candidates(self, names: set[str]) -> list[dict[str, str]]:
        """Recorded objects that fill every object-naming parameter among ``names``."""
        wanted = names & PATH_KEYS
        return [item for item in self.objects if wanted and wanted <= set(item)]


def steer(case: schemathesis.Case, data: st.DataObject, seen: Seen, base: str) -> None:
    """Half of the time, point the case at something that exists or at media that passes the first checks; and a
    text-to-video case always at a first frame that fails to fetch (see ``BASE_ENDPOINT``)."""
    if BASE_ENDPOINT.fullmatch(case.path) and isinstance(case.body, dict) and not case.body.get("video_url"):
        case.body["first_frame_url"] = data.draw(st.sampled_from(MEDIA_REFS), label="t2v first frame").format(base=base)
    if not data.draw(st.booleans(), label="steer"):
        return
    if case.path_parameters:
        known = seen.candidates(set(case.path_parameters))
        if known:
            chosen = data.draw(st.sampled_from(known), label="known object")
            case.path_parameters.update({k: v for k, v in chosen.items() if k in case.path_parameters})
    if isinstance(case.body, dict):
        for name in MEDIA_FIELDS:
            if isinstance(case.body.get(name), str):
                case.body[name] = data.draw(st.sampled_from(MEDIA_REFS), label=name).format(base=base)
        if isinstance(case.body.get("ref_image_urls"), list):
            refs = st.lists(st.sampled_from(MEDIA_REFS), max_size=2)
            case.body["ref_image_urls"] = [r.format(base=base) for r in data.draw(refs, label="ref_image_urls")]
    if isinstance(case.query, dict) and "fal_webhook" in case.query:
        case.query["fal_webhook"] = data.draw(st.sampled_from(WEBHOOKS), label="fal_webhook")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def loopback_only(real: Callable[..., Any]) -> Callable[..., Any]:
    """A ``socket.getaddrinfo`` that resolves loopback only: no lookup or connection ever leaves the machine."""

    def getaddrinfo(host: str | bytes | None, *args: Any, **kwargs: Any) -> Any:
        name = host.decode(errors="replace") if isinstance(host, bytes) else host
        if name is None or _is_loopback(name):
            return real(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, f"{name!r} does not resolve in this test (loopback only)")

    return getaddrinfo


@pytest.fixture(scope="module")
def server(server_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    config = Settings(
        weights_dir=server_weights,
        data_dir=tmp_path_factory.mktemp("fuzz-data"),
        port=free_port(),
        webhook_attempts=1,
        max_upload_bytes=1024 * 1024,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", loopback_only(socket.getaddrinfo))
        with ThreadServer(config) as running:
            yield running


def fal_detail_items(detail: object) -> bool:
    """Whether ``detail`` is fal's validation list: objects with ``loc`` (list), ``msg`` and ``type`` (strings)."""
    return isinstance(detail, list) and all(
        isinstance(item, dict)
        and isinstance(item.get("loc"), list)
        and isinstance(item.get("msg"), str)
        and isinstance(item.get("type"), str)
        for item in detail
    )


def problem(status: int, text: str, json_expected: bool) -> str | None:
    """What is wrong with an answer, or None: a 5xx, an error that is not fal-shaped, a JSON route's non-JSON."""
    if status >= 500:
        return "server error"
    if status < 400 and not json_expected:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return "body is not JSON"
    if status < 400:
        return None
    if not isinstance(body, dict) or "detail" not in body:
        return "error without a 'detail'"
    detail = body["detail"]
    if status == 422:
        return None if detail and fal_detail_items(detail) else "422 detail is not fal's list of {loc, msg, type}"
    return None if isinstance(detail, str) or fal_detail_items(detail) else "detail is neither a string nor fal's list"


def fuzz(operation: APIOperation, mode: GenerationMode, seen: Seen, base: str) -> None:
    """Send ``operation`` the cases Hypothesis generates in ``mode``; fail on the first bad answer."""
    json_expected = operation.path not in NOT_JSON

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(mode), data=st.data())
    def run(case: schemathesis.Case, data: st.DataObject) -> None:
        steer(case, data, seen, base)
        response = case.call(timeout=CALL_TIMEOUT_S)
        wrong = problem(response.status_code, response.text, json_expected)
        assert wrong is None, f"{wrong}: {response.status_code} {response.text[:500]!r}\n{case.as_curl_command()}"
        seen.record(case.formatted_path, response)

    run()


def test_every_route_answers_without_5xx_and_with_fal_shaped_errors(server: ThreadServer) -> None:
    schema: BaseSchema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [operation for methods in schema.values() for operation in methods.values()]
    # 12 sync runs, 12 queue submits (6 endpoints on 2 apps), 4 request routes, the upload, file and service routes
    assert len(operations) >= 36, [op.label for op in operations]
    seen, failures = Seen(), []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation, mode, seen, server.url)
            except Unsatisfiable:
                # No request can violate a schema that has no inputs, or only unconstrained strings (/health,
                # /queue/.../requests/{request_id}); schemathesis's own runner skips these too.
                assert mode is GenerationMode.NEGATIVE, operation.label
            except AssertionError as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)


def test_undeclared_methods_are_fal_shaped(server: ThreadServer) -> None:
    """What schemathesis's strategies never send: each documented path with the methods it does not declare."""
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    failures = []
    with httpx.Client(base_url=server.url, timeout=CALL_TIMEOUT_S) as client:
        for path, declared in paths.items():
            url = re.sub(r"\{[^}]+\}", "x", path)
            for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - {m.upper() for m in declared}):
                response = client.request(method, url)
                wrong = problem(response.status_code, response.text, json_expected=True)
                if wrong is not None:
                    failures.append(f"{method} {url}: {wrong}: {response.status_code} {response.text[:300]!r}")
    assert not failures, "\n".join(failures)
