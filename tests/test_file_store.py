"""The file store's contract, run once against each store: a directory (``LocalFileStore``) and an S3 bucket
(``S3FileStore`` on moto's S3 server, see ``tests/s3_fixtures.py``).

Uploads in one piece and in parts (the limit counts the parts together, ``complete`` takes exactly the parts sent),
adopting a job's output, mapping our URLs back to keys and reading them for a job (a file over the job's limit is
refused before any of it is copied), deleting, and the retention sweep.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from s3_fixtures import S3Server, s3_server  # noqa: F401

from pipelines.context import JobContext
from pipelines.errors import FileTooLarge, InputError
from pipelines.fetch import fetch_to_file
from server.files.s3 import S3FileStore
from server.files.store import FileStore, LocalFileStore, UploadTooLarge

BASE = "http://vace.test"
LIMIT = 1000


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileStore]:
    if request.param == "local":
        yield LocalFileStore(tmp_path / "files", tmp_path / "uploads", LIMIT)
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        yield S3FileStore(s3.new_bucket(), max_bytes=LIMIT, spool_dir=tmp_path / "spool", url_ttl_s=600)


async def _chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def receive(store: FileStore, key: str, *pieces: bytes) -> int:
    return anyio.run(store.receive, key, _chunks(*pieces))


def part(store: FileStore, upload_id: str, n: int, data: bytes) -> str:
    return anyio.run(store.receive_part, upload_id, n, _chunks(data))


def read(store: FileStore, key: str, workdir: Path) -> bytes | None:
    """The bytes a job reading our ``/files/`` URL of ``key`` gets, or None when the store has no such file."""
    workdir.mkdir(exist_ok=True)
    path = store.fetch(store.url(key, BASE), workdir, LIMIT)
    return None if path is None else path.read_bytes()


def test_uploads_are_read_back_for_jobs_and_deleted(store: FileStore, tmp_path: Path) -> None:
    key = store.new_key("my clip.mp4")
    assert key.endswith("/my_clip.mp4")
    assert receive(store, key, b"abc", b"def") == 6
    assert read(store, key, tmp_path / "job") == b"abcdef"
    assert store.response(key) is not None
    assert store.key_of(store.url(key, "https://elsewhere:8443/")) == key  # any host: the token identifies it
    assert store.key_of(store.output_url(key, BASE)) == key
    for ref in ("file:///etc/passwd", f"{BASE}/files/short/x.mp4", "not a url", f"{BASE}/other/{key}"):
        assert store.key_of(ref) is None

    with pytest.raises(UploadTooLarge):
        receive(store, store.new_key("big.bin"), b"x" * LIMIT, b"x")
    missing = store.new_key("never.mp4")
    assert read(store, missing, tmp_path / "job") is None and store.response(missing) is None

    store.delete(key)
    assert read(store, key, tmp_path / "job") is None and store.response(key) is None
    store.delete(key)  # gone already is fine


def test_adopted_outputs_get_a_url_that_serves_them(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "out.mp4"
    src.write_bytes(b"\x00\x00\x00\x18ftypisom")
    key = store.adopt(src, "out.mp4")
    assert not src.exists() and key.endswith("/out.mp4")
    url = store.output_url(key, BASE)
    if isinstance(store, S3FileStore):  # a presigned URL of the bucket, which serves the bytes itself
        assert "X-Amz-Signature=" in url and not url.startswith(BASE)
        answer = httpx.get(url, timeout=30)
        assert answer.content == b"\x00\x00\x00\x18ftypisom" and answer.headers["content-type"] == "video/mp4"
        assert "content-disposition" not in answer.headers  # passive media play in place
    else:
        assert url == f"{BASE}/files/{key}"
    assert read(store, key, tmp_path / "job") == b"\x00\x00\x00\x18ftypisom"


def test_multipart_uploads_count_parts_together_and_join_exactly_the_parts_sent(
    store: FileStore, tmp_path: Path
) -> None:
    key = store.new_key("parts.bin")
    upload_id = store.start_upload(key, owner="key-1")
    pending = store.pending(upload_id)
    assert pending is not None and pending.key == key and pending.owner == "key-1"
    assert store.pending("x" * 32) is None and store.pending("../../etc") is None

    assert part(store, upload_id, 2, b"B" * 400) == hashlib.md5(b"B" * 400).hexdigest()  # the ETag S3 clients expect
    part(store, upload_id, 1, b"a" * 400)
    part(store, upload_id, 1, b"A" * 400)  # re-sending a part replaces it
    with pytest.raises(UploadTooLarge):  # 400 + 400 + 300 > 1000
        part(store, upload_id, 3, b"C" * 300)
    with pytest.raises(ValueError, match="not uploaded"):
        store.complete_upload(upload_id, [1, 2, 3])
    with pytest.raises(ValueError, match="more than once"):
        store.complete_upload(upload_id, [1, 1, 2])
    with pytest.raises(ValueError, match="uploaded but not listed"):
        store.complete_upload(upload_id, [1])
    assert store.complete_upload(upload_id, [2, 1]) == key
    assert store.pending(upload_id) is None  # used up
    with pytest.raises(KeyError):
        store.complete_upload(upload_id, [1, 2])
    assert read(store, key, tmp_path / "job") == b"A" * 400 + b"B" * 400


class CountedInt(int):
    """A part number that counts the comparisons and hashes made of it: the work ``complete`` does per part."""

    ops = 0

    def __eq__(self, other: object) -> bool:
        CountedInt.ops += 1
        return int.__eq__(self, other)

    def __lt__(self, other: int) -> bool:  # type: ignore[override]
        CountedInt.ops += 1
        return int.__lt__(self, other)

    def __hash__(self) -> int:
        CountedInt.ops += 1
        return int.__hash__(self)


def test_complete_is_linear_in_the_parts_listed(tmp_path: Path) -> None:
    """2,000 parts (listed shuffled, so the sort does real work): comparisons and hashes grow as n log n at most,
    where counting each listed number among the others (the quadratic check this replaced) made 4 million."""
    store = LocalFileStore(tmp_path / "files", tmp_path / "uploads", 10**6)
    count = 2000
    key = store.new_key("many.bin")
    upload_id = store.start_upload(key)

    async def put_parts() -> None:  # straight to the store: each part's own size check lists the parts again
        for n in range(1, count + 1):
            await store._put_part(upload_id, n, _chunks(n.to_bytes(2, "big")), 10**6)

    anyio.run(put_parts)
    numbers = [CountedInt(n) for n in range(1, count + 1)]
    random.Random(1).shuffle(numbers)
    for listed in ([*numbers, numbers[5]], numbers):  # a repeated number, then the right list
        CountedInt.ops = 0
        if len(listed) > count:
            with pytest.raises(ValueError, match="more than once"):
                store.complete_upload(upload_id, listed)
        else:
            assert store.complete_upload(upload_id, listed) == key
        assert CountedInt.ops <= 20 * count, f"{CountedInt.ops} operations for {count} parts"
    assert read(store, key, tmp_path / "job") == b"".join(n.to_bytes(2, "big") for n in range(1, count + 1))


def test_a_new_s3_store_deletes_the_spool_of_crashed_processes_only(s3_server: S3Server, tmp_path: Path) -> None:
    """Bodies spooled by a process that crashed are deleted when the next one starts; those of a process still
    running on the same data directory (an API node beside a worker) are kept."""
    spool = tmp_path / "spool"
    bucket = s3_server.new_bucket()
    running = S3FileStore(bucket, max_bytes=LIMIT, spool_dir=spool, url_ttl_s=600)
    (running.spool_dir / "in-flight").write_bytes(b"a body being received")
    crashed = spool / "0123456789abcdef"
    crashed.mkdir()
    (crashed / "left-behind").write_bytes(b"x" * 100)
    (spool / "0123456789abcdef.lock").touch()  # its lock, which nobody holds any more
    (spool / "loose-body").write_bytes(b"y")  # a body spooled before spools had owners
    started = S3FileStore(bucket, max_bytes=LIMIT, spool_dir=spool, url_ttl_s=600)
    assert not crashed.exists() and not (spool / "0123456789abcdef.lock").exists()
    assert not (spool / "loose-body").exists()
    assert (running.spool_dir / "in-flight").read_bytes() == b"a body being received"
    assert started.spool_dir != running.spool_dir and started.spool_dir.parent == spool
    key = started.new_key("a.bin")
    receive(started, key, b"through the new spool")
    assert read(started, key, tmp_path / "job") == b"through the new spool"
    assert list(started.spool_dir.iterdir()) == []  # a spooled body is deleted once stored


def test_an_s3_file_replaced_after_its_size_check_is_refused_past_the_limit(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """A second PUT lands between the job's size check and its download (the HEAD's answer triggers it): the
    download stops at the limit instead of taking the bigger object."""
    store = S3FileStore(s3_server.new_bucket(), max_bytes=LIMIT, spool_dir=tmp_path / "spool", url_ttl_s=600)
    key = store.new_key("input.mp4")
    receive(store, key, b"small")
    other = s3_server.client()

    def second_put(**_kwargs: object) -> None:
        other.put_object(Bucket=store.bucket, Key=f"{store.prefix}files/{key}", Body=b"x" * (LIMIT * 50))

    store.client.meta.events.register("after-call.s3.HeadObject", second_put)
    workdir = tmp_path / "job"
    workdir.mkdir()
    with pytest.raises(FileTooLarge, match="while it was read"):
        store.fetch(store.url(key, BASE), workdir, LIMIT)
    assert list(workdir.iterdir()) == []


def test_a_local_file_never_changes_once_received(tmp_path: Path) -> None:
    """Two bodies racing for one key (two PUTs to one upload URL): the first to finish is the file, the other is
    refused and leaves nothing behind, so a job that checked the file's size reads those same bytes."""
    store = LocalFileStore(tmp_path / "files", tmp_path / "uploads", LIMIT)
    key = store.new_key("input.mp4")

    async def race() -> None:
        second_may_end = anyio.Event()

        async def slow() -> AsyncIterator[bytes]:
            yield b"first half "
            await second_may_end.wait()
            yield b"x" * 500

        async with anyio.create_task_group() as tasks:

            async def late() -> None:
                with pytest.raises(FileExistsError):
                    await store.receive(key, slow())

            tasks.start_soon(late)
            await anyio.sleep(0.05)
            assert await store.receive(key, _chunks(b"small")) == 5
            second_may_end.set()

    anyio.run(race)
    assert read(store, key, tmp_path / "job") == b"small"
    assert [p.name for p in (tmp_path / "files" / key).parent.iterdir()] == [key.rpartition("/")[2]]


def test_sweep_deletes_old_files_and_abandoned_uploads_but_inputs_in_use(store: FileStore, tmp_path: Path) -> None:
    old, in_use = store.new_key("old.mp4"), store.new_key("input.mp4")
    for key in (old, in_use):
        receive(store, key, b"x")
    abandoned = store.start_upload(store.new_key("never.mp4"))
    part(store, abandoned, 1, b"p")

    assert store.sweep(time.time() - 3600, keep=set()) == (0, 0)  # nothing is an hour old
    assert store.sweep(time.time() + 60, keep={in_use}) == (1, 1)
    assert read(store, old, tmp_path / "job") is None and read(store, in_use, tmp_path / "job") == b"x"
    assert store.pending(abandoned) is None
    assert store.sweep(time.time() + 60, keep={in_use}) == (0, 0)  # nothing twice


def test_a_job_is_refused_a_file_over_its_limit_before_copying_it(store: FileStore, tmp_path: Path) -> None:
    """A bucket's object is sized before it is downloaded: an oversized input is a fal-shaped download error and
    nothing lands in the job's work directory."""
    key = store.new_key("big.mp4")
    receive(store, key, b"x" * 600)
    ctx = JobContext(local_files=store.fetch, local_paths=False)  # as a server's jobs read their inputs
    workdir = tmp_path / "job"
    workdir.mkdir()
    with pytest.raises(InputError) as refused:
        fetch_to_file(store.url(key, BASE), "video_url", workdir, ctx, max_bytes=599)
    assert refused.value.type == "file_download_error" and refused.value.loc == ("video_url",)
    assert "larger than the 599-byte limit" in refused.value.msg
    assert list(workdir.iterdir()) == []
    assert fetch_to_file(store.url(key, BASE), "video_url", workdir, ctx, max_bytes=600).read_bytes() == b"x" * 600
