"""Prometheus metrics: queue depth and jobs by state (read from the store at scrape time, so they are right after
a restart too), denoising step time and job duration (observed by the workers), jobs resumed from a checkpoint and
the steps that saved, a job group's spec and restarts, and GPU memory on CUDA (as the workers report it with their
heartbeat).

The workers report through :class:`Metrics`' methods; a worker in a process of its own relays the same calls to
its node (``server/runtime/worker_process.py``), so one ``/metrics`` shows every worker of the node.

Each app instance has its own registry, so several servers in one process (tests) do not collide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipelines.registry import APP_TASKS

from ..store.jobs import JobStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80)
_JOB_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 2400, 3600)


class _StoreCollector(Collector):
    def __init__(self, store: JobStore, gpu_memory: dict[str, tuple[int, int, int]]) -> None:
        self.store = store
        self.gpu_memory = gpu_memory

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts()
        depth = GaugeMetricFamily("vace_queue_depth", "Jobs waiting in the queue.")
        depth.add_metric([], counts["queued"])
        yield depth
        per_endpoint = GaugeMetricFamily(
            "vace_queue_depth_by_endpoint",
            "Jobs waiting in the (shared) queue per endpoint and priority: the signal to scale GPU workers on.",
            labels=["app", "task", "priority"],
        )
        depths = self.store.queue_depths()
        for app, tasks in APP_TASKS.items():
            for task in tasks:  # "" is the base endpoint
                for priority in ("normal", "low"):
                    per_endpoint.add_metric([app, task, priority], depths.get((app, task, priority), 0))
        yield per_endpoint
        jobs = GaugeMetricFamily("vace_jobs", "Jobs in the store by state.", labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state], n)
        yield jobs
        if self.gpu_memory:
            allocated = GaugeMetricFamily("vace_gpu_memory_allocated_bytes", "Tensor memory in use.", labels=["device"])
            reserved = GaugeMetricFamily(
                "vace_gpu_memory_reserved_bytes", "Memory held by the caching allocator.", labels=["device"]
            )
            peak = GaugeMetricFamily("vace_gpu_memory_peak_bytes", "Peak tensor memory since start.", labels=["device"])
            for device, (in_use, held, highest) in sorted(self.gpu_memory.items()):
                allocated.add_metric([device], in_use)
                reserved.add_metric([device], held)
                peak.add_metric([device], highest)
            yield from (allocated, reserved, peak)


class Metrics:
    """The server's metrics; workers report through ``step``, ``job``, ``resumed``, ``group_restart`` and ``gpu``,
    retention counts in ``retention_deleted``."""

    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry()
        self.step_seconds = Histogram(
            "vace_step_seconds",
            "Seconds between consecutive denoising steps.",
            ["model", "device"],
            buckets=_STEP_BUCKETS,
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "vace_job_duration_seconds",
            "Seconds from a job's start on a worker to its end.",
            ["app", "task", "outcome"],
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "vace_webhook_deliveries",
            "Webhook delivery outcomes: delivered, retried (an attempt failed, another "
            "follows) and failed (the last attempt failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.retention_deleted = Counter(
            "vace_retention_deleted",
            "Files, abandoned uploads and finished jobs deleted for their age.",
            ["kind"],
            registry=self.registry,
        )
        self.resumed_jobs = Counter(
            "vace_resumed_jobs",
            "Runs of a handed-back job that went on from its checkpoint instead of step 0.",
            registry=self.registry,
        )
        self.resume_steps_saved = Counter(
            "vace_resume_steps_saved",
            "Denoising steps that resumed runs did not do again (the checkpoints' steps).",
            registry=self.registry,
        )
        self.group_restarts = Counter(
            "vace_group_restarts",
            "Job groups replaced by a new one because a rank exited or fell out of step.",
            registry=self.registry,
        )
        self._group = Gauge(
            "vace_group_devices",
            "This worker's job group (--parallel): its device count, labelled with the spec and the devices.",
            ["parallel", "devices"],
            registry=self.registry,
        )
        self._gpu_memory: dict[str, tuple[int, int, int]] = {}
        self.registry.register(_StoreCollector(store, self._gpu_memory))

    def step(self, model: str, device: str, seconds: float) -> None:
        """A denoising step of ``model`` on ``device`` took ``seconds`` (from the end of the previous one)."""
        self.step_seconds.labels(model, device).observe(seconds)

    def job(self, app: str, task: str, outcome: str, seconds: float) -> None:
        """A job ended with ``outcome`` (ok, error, cancelled) ``seconds`` after its worker started it."""
        self.job_seconds.labels(app, task, outcome).observe(seconds)

    def resumed(self, steps: int) -> None:
        """A job's run went on from its checkpoint after ``steps`` steps."""
        self.resumed_jobs.inc()
        self.resume_steps_saved.inc(steps)

    def group_restart(self) -> None:
        """A failed job group was replaced by a new one."""
        self.group_restarts.inc()

    def gpu(self, device: str, allocated: int, reserved: int, peak: int) -> None:
        """A worker's CUDA memory on ``device``: in use, held by the caching allocator, and the peak in use."""
        self._gpu_memory[device] = (allocated, reserved, peak)

    def show_group(self, info: dict[str, Any]) -> None:
        """Expose a job group's spec and devices (``WorkerGroup.describe``)."""
        self._group.labels(info["parallel"], ",".join(info["devices"])).set(len(info["devices"]))

    def render(self) -> bytes:
        return generate_latest(self.registry)
