"""What only the shared PostgreSQL store has to get right: concurrent claims from several processes (SKIP LOCKED),
queue upkeep on several nodes at once, schema migrations, LISTEN/NOTIFY wake-ups, a database restart under a
running store, and webhook deliveries taken over from a node that died.

The store's protocol itself (both stores) is tested in test_server_store.py.
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from pg_fixtures import PostgresCluster
from server_fixtures import REPO, Receiver, free_port, verify_like_fals_docs

from pipelines.context import JobContext
from server.runtime.signing import WebhookSigner, new_signing_key
from server.runtime.webhooks import Webhooks
from server.store.jobs import Job
from server.store.postgres import (
    JOB_CHANNEL,
    QUEUE_CHANNEL,
    SCHEMA_VERSION,
    WEBHOOK_CHANNEL,
    PostgresJobStore,
    StoreUnavailableError,
    migrate,
)

pytestmark = pytest.mark.serial  # deadlines and latencies: run with no other test beside it (Makefile)

# One claiming process: opens the store, says it is ready, waits for "go" on stdin, then claims with 4 threads until
# the queue is empty (each "run" a few ms, so the processes' claims interleave) and prints what each claim returned.
_CLAIMER = """
import json, sys, threading, time
from server.store.postgres import PostgresJobStore
store = PostgresJobStore(sys.argv[1], max_connections=4)
print("ready", flush=True)
sys.stdin.readline()
claims = []
def claim_all(worker):
    while (job := store.claim(worker_id=worker, lease_s=60)) is not None:
        claims.append([job.id, job.attempts])
        time.sleep(0.002)
threads = [threading.Thread(target=claim_all, args=(f"{sys.argv[2]}-{n}",)) for n in range(4)]
for t in threads: t.start()
for t in threads: t.join()
store.close()
print(json.dumps(claims), flush=True)
"""


def add(store: PostgresJobStore) -> Job:
    return store.add(
        app="fal-ai/wan-vace-14b",
        task="pose",
        model="wan-vace-14b",
        input={"prompt": "x"},
        base_url="http://h",
        webhook_url=None,
    )


def test_concurrent_claims_from_two_processes_never_share_a_job(pg_url: str) -> None:
    store = PostgresJobStore(pg_url)
    jobs = {add(store).id for _ in range(120)}
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, pg_url, f"p{n}"],
            cwd=REPO,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for n in range(2)
    ]
    try:
        for proc in claimers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in claimers:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        outputs = [proc.communicate(timeout=120)[0] for proc in claimers]
    finally:
        for proc in claimers:
            proc.kill()
    per_process = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    claimed = [job_id for claims in per_process for job_id, _ in claims]
    assert sorted(claimed) == sorted(jobs)  # every job claimed, none twice
    assert {attempts for claims in per_process for _, attempts in claims} == {1}
    assert all(per_process), "both processes should have claimed jobs"
    assert store.counts()["running"] == len(jobs)
    store.close()


def test_nodes_sweeping_at_once_end_or_hand_back_each_job_once(pg_url: str) -> None:
    """Every node runs the queue upkeep (server/runtime/upkeep.py); three nodes sweeping the same expired leases and
    start timeouts at the same moment touch each job once: one "re-queued" line and one attempt per lost job."""
    stores = [PostgresJobStore(pg_url) for _ in range(3)]
    lost = [add(stores[0]).id for _ in range(30)]
    for _ in lost:
        stores[0].claim(worker_id="dead", lease_s=0.01)
    late = [
        stores[0]
        .add(
            app="fal-ai/wan-vace-14b",
            task="pose",
            model="wan-vace-14b",
            input={},
            base_url="http://h",
            webhook_url=None,
            start_timeout_s=0,
        )
        .id
        for _ in range(30)
    ]
    time.sleep(0.05)
    start = threading.Barrier(len(stores))
    touched: list[str] = []

    def sweep(store: PostgresJobStore) -> None:
        start.wait()
        touched.extend(store.expire_unstarted() + store.requeue_expired(max_attempts=3))

    threads = [threading.Thread(target=sweep, args=(store,)) for store in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(touched) == sorted(lost + late)
    for job_id in lost:
        job = stores[1].get(job_id)
        assert job is not None and job.status == "IN_QUEUE" and job.attempts == 1
        assert sum("re-queued" in line.message for line in stores[1].logs(job_id)) == 1
    assert all(len(stores[2].logs(job_id)) == 1 for job_id in late)
    for store in stores:
        store.close()


def test_claim_skips_a_row_another_transaction_holds(pg_url: str) -> None:
    store = PostgresJobStore(pg_url)
    first, second = add(store), add(store)
    with psycopg.connect(pg_url) as other:  # e.g. another worker in the middle of claiming `first`
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (first.id,))
        started = time.monotonic()
        assert store.claim().id == second.id  # type: ignore[union-attr]
        assert time.monotonic() - started < 2  # not waiting for the other transaction
        assert store.claim() is None
        other.rollback()
    assert store.claim().id == first.id  # type: ignore[union-attr]
    store.close()


def test_schema_from_an_older_version_is_upgraded(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert migrate(conn, to_version=1) == 0  # a database made by the first release: no leases, no triggers
        conn.execute(
            "INSERT INTO jobs (id, app, task, model, input, base_url, status, created_at, attempts,"
            " started_at) VALUES ('old-running', 'fal-ai/wan-vace-14b', 'pose', 'wan-vace-14b',"
            " '{\"prompt\": \"old\"}', 'http://h', 'IN_PROGRESS', 1.0, 1, 2.0),"
            " ('old-queued', 'fal-ai/wan-vace-14b', 'pose', 'wan-vace-14b', '{}', 'http://h', 'IN_QUEUE',"
            " 3.0, 0, NULL)"
        )
    store = PostgresJobStore(pg_url)
    with psycopg.connect(pg_url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    old = store.get("old-running")
    assert old is not None and old.input == {"prompt": "old"} and old.worker_id is None
    assert store.claim(worker_id="w1", lease_s=30).id == "old-queued"  # type: ignore[union-attr]
    assert store.heartbeat("old-queued", "w1", lease_s=30)
    assert store.recover(max_attempts=3) == ["old-running", "old-queued"]
    store.close()
    PostgresJobStore(pg_url).close()  # opening an up-to-date database changes nothing
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone() == (SCHEMA_VERSION,)


def test_nodes_starting_together_migrate_once(pg_url: str) -> None:
    stores: list[PostgresJobStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(PostgresJobStore(pg_url, max_connections=1))
        except BaseException as e:  # noqa: BLE001 - reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(stores) == 4
    job = add(stores[0])
    assert stores[3].get(job.id) == job
    for store in stores:
        store.close()


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    PostgresJobStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (%s, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreUnavailableError, match="newer than this server"):
        PostgresJobStore(pg_url)


def test_unreachable_database_is_named_without_its_password() -> None:
    port = free_port()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}/jobs") as raised:
        PostgresJobStore(f"postgresql://vace:s3cret@127.0.0.1:{port}/jobs", connect_timeout_s=1)
    assert "s3cret" not in str(raised.value)


class Notes:
    """Notifications a listener received, in order."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self.connections = 0
        self.connected = threading.Event()

    def received(self, channel: str, payload: str) -> None:
        self.queue.put((channel, payload))

    def on_connect(self) -> None:
        self.connections += 1
        self.connected.set()

    def next(self, timeout_s: float = 5) -> tuple[str, str]:
        return self.queue.get(timeout=timeout_s)

    def until(self, sentinel: tuple[str, str]) -> list[tuple[str, str]]:
        """The notifications received before ``sentinel`` (which a test sends after the changes it looks at)."""
        before = []
        while (note := self.next()) != sentinel:
            before.append(note)
        return before


def test_changes_made_by_another_process_wake_listeners(pg_url: str) -> None:
    listening, other = PostgresJobStore(pg_url), PostgresJobStore(pg_url)  # an API node and a worker node
    notes = Notes()
    listening.listen(
        [QUEUE_CHANNEL, JOB_CHANNEL, WEBHOOK_CHANNEL, "vace_test"], notes.received, on_connect=notes.on_connect
    )
    assert notes.connected.wait(10)

    started = time.monotonic()
    job = add(other)
    assert {notes.next(), notes.next()} == {(QUEUE_CHANNEL, job.id), (JOB_CHANNEL, job.id)}
    assert time.monotonic() - started < 1  # a wake-up, not a poll (typically a few ms)
    other.claim(worker_id="w1", lease_s=30)
    assert notes.next() == (JOB_CHANNEL, job.id)  # IN_PROGRESS; no longer claimable: nothing on the queue channel
    other.heartbeat(job.id, "w1", lease_s=30)
    other.notify("vace_test", "after the heartbeat")
    assert notes.next() == ("vace_test", "after the heartbeat")  # a heartbeat wakes nobody
    other.log(job.id, "step 1/2")
    assert notes.next() == (JOB_CHANNEL, job.id)
    listening.request_cancel(job.id)  # the API node's cancel reaches the worker's listener at once
    assert notes.next() == (JOB_CHANNEL, job.id)
    assert other.finish(job.id, cancelled=True, worker_id="w1")
    assert notes.next() == (JOB_CHANNEL, job.id)
    assert other.requeue_expired(max_attempts=2) == []

    back = add(other)
    other.claim(worker_id="w2", lease_s=0.01)
    other.notify("vace_test", "claimed")
    notes.until(("vace_test", "claimed"))
    time.sleep(0.05)  # w2 dies
    assert listening.requeue_expired(max_attempts=2) == [back.id]
    other.notify("vace_test", "handed back")
    assert (QUEUE_CHANNEL, back.id) in notes.until(("vace_test", "handed back")), "idle workers are woken"

    # A worker node ends a job with a webhook: the API nodes (which hold the signing key) are woken to deliver it,
    # and again when the node delivering it stops and hands it back, but not while a node holds it.
    hooked = other.add(
        app="fal-ai/wan-vace-14b",
        task="pose",
        model="wan-vace-14b",
        input={"prompt": "x"},
        base_url="http://h",
        webhook_url="http://hook",
    )
    assert [other.claim(worker_id="w3", lease_s=30).id for _ in range(2)] == [back.id, hooked.id]  # type: ignore[union-attr]
    other.notify("vace_test", "hooked claimed")
    notes.until(("vace_test", "hooked claimed"))
    assert other.finish(hooked.id, result={"seed": 1}, worker_id="w3")
    assert listening.claim_webhook(hooked.id, "api-1", 30) is not None
    assert listening.release_webhooks("api-1") == 1
    other.notify("vace_test", "released")
    assert [n for n in notes.until(("vace_test", "released")) if n[0] == WEBHOOK_CHANNEL] == [
        (WEBHOOK_CHANNEL, hooked.id),
        (WEBHOOK_CHANNEL, hooked.id),
    ]
    other.close()
    listening.close()


def test_store_and_listener_carry_on_after_a_database_restart(pg_cluster: PostgresCluster, pg_url: str) -> None:
    store = PostgresJobStore(pg_url)
    notes = Notes()
    store.listen([QUEUE_CHANNEL, "vace_test"], notes.received, on_connect=notes.on_connect)
    assert notes.connected.wait(10)
    running, queued = add(store), add(store)
    store.claim(worker_id="w1", lease_s=30)

    pg_cluster.restart()  # every connection of the pool and the listener is cut

    assert store.get(running.id).status == "IN_PROGRESS"  # type: ignore[union-attr]  # nothing lost
    assert store.heartbeat(running.id, "w1", lease_s=30)
    assert store.finish(running.id, result={"seed": 1}, worker_id="w1")
    assert store.claim(worker_id="w1", lease_s=30).id == queued.id  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while notes.connections < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert notes.connections == 2, "the listener reconnected (and called on_connect to resynchronise)"
    after = add(store)
    store.notify("vace_test", "end")
    assert (QUEUE_CHANNEL, after.id) in notes.until(("vace_test", "end"))
    store.close()


@pytest.mark.parametrize("end", ["dies", "stops"])
def test_a_live_node_resumes_another_nodes_webhook_once(pg_url: str, end: str) -> None:
    """Two nodes with their own stores on one database both try to deliver a webhook: one delivers (its first
    attempt fails), the other keeps off; the first dies (loses the database, then stops) or stops gracefully in its
    back-off; the other resumes once the claim runs out, or, after a graceful stop, when the back-off ends, and the
    receiver gets the delivery once more, not twice."""
    receiver = Receiver()
    receiver.plan = [503]
    stores = [PostgresJobStore(pg_url) for _ in range(2)]
    job = stores[0].add(
        app="fal-ai/wan-vace-14b",
        task="pose",
        model="wan-vace-14b",
        input={"prompt": "x"},
        base_url="http://h",
        webhook_url=receiver.url,
    )
    stores[0].claim()
    stores[0].finish(job.id, result={"seed": 1})
    signer = WebhookSigner(new_signing_key(), b"fleet secret")  # one fleet: the same key on both (node_secrets)
    outcomes: list[str] = []
    nodes = [
        Webhooks(
            store,
            signer,
            JobContext(webhook_allow=(f"127.0.0.1:{receiver.port}",)),
            attempts=3,
            backoff_s=1.0,
            timeout_s=1.0,
            lease_s=0.6,
            concurrency=4,
            on_outcome=outcomes.append,
        )
        for store in stores
    ]

    async def scenario() -> float:
        for node in nodes:
            await node.start()
            node.schedule(job.id)  # both nodes learn of the job's end at once
        while not receiver.for_job(job.id):  # noqa: ASYNC110 - the receiver is a thread: no event to await
            await asyncio.sleep(0.05)
        with psycopg.connect(pg_url) as conn:
            owner, lease_until = conn.execute("SELECT webhook_owner, webhook_lease_until FROM jobs").fetchone()
        first = next(node for node in nodes if node.node_id == owner)
        if end == "dies":  # without its database it cannot release the claim it holds
            first.store.close()
        await first.stop()
        survivor = next(node for node in nodes if node is not first)
        while len(receiver.for_job(job.id)) < 2:
            await asyncio.sleep(0.05)
            assert time.time() < lease_until + 30, "the survivor did not take the delivery over"
        await asyncio.sleep(1.5)  # two sweeps: no other delivery follows
        await survivor.stop()
        return lease_until

    try:
        lease_until = asyncio.run(scenario())
        deliveries = receiver.for_job(job.id)
        assert len(deliveries) == 2 and outcomes == ["retried", "delivered"]
        headers, body = deliveries[1]
        assert verify_like_fals_docs(headers, body, signer.jwks())
        sent = float(headers["x-fal-webhook-timestamp"])  # whole seconds
        if end == "dies":
            assert sent >= int(lease_until)  # not before the dead node's claim ran out
        else:
            assert sent < lease_until  # released: resumed when the back-off ended
        check = PostgresJobStore(pg_url)  # not one the test may have closed, whichever node held the claim
        stores.append(check)
        assert check.pending_webhooks() == [] and check.claim_webhook(job.id, "anyone", 30) is None
    finally:
        receiver.close()
        for store in stores:
            store.close()
