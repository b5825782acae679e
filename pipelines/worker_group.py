"""A worker whose devices form one job group (``--devices D1 D2 ... --parallel SPEC``): the worker's thread is
rank 0 of a ``pipelines.group.Followers`` and the other devices are its follower processes.

The worker claims, fetches, checks, encodes, publishes and renews the lease as any worker does; this module keeps
the group serving: it starts the group before the first claim and, before every later claim, checks that the
group is whole and in step, closing it and starting a new one (new follower processes, a new process group, the
models loaded again) when a follower exited or is still inside a job that rank 0 left. A follower that exits
mid-job makes rank 0's job raise (see ``pipelines.group``); ``interrupted`` then names the rank so the worker hands
the job back under the attempt rules instead of failing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .group import Followers
from .loading import ModelManager
from .parallel import ParallelSpec
from .runtime import RuntimeConfig

log = logging.getLogger(__name__)

IN_STEP_WAIT_S = 5.0
"""How long the followers may take to finish a job after rank 0 did (they skip decoding, so they are ahead)."""
EXIT_WAIT_S = 2.0
"""How long rank 0 waits, after its job raised, for a follower that is going down to be seen as exited."""


class WorkerGroup:
    """The job group of one worker: its spec and devices, and the models of rank 0 in the running group."""

    def __init__(
        self,
        spec: ParallelSpec,
        devices: Sequence[str],
        weights_dir: Path,
        runtime: RuntimeConfig,
        max_models: int,
        on_restart: Callable[[str], None],
    ) -> None:
        """``on_restart(cause)``: told each time a failed group is replaced (metrics)."""
        self.spec = spec
        self.devices = [str(d) for d in devices]
        self.weights_dir, self.runtime, self.max_models = weights_dir, runtime, max_models
        self.on_restart = on_restart
        self.followers: Followers | None = None
        """The running group (None before the first and between two)."""
        self.manager: ModelManager | None = None

    def ready(self) -> ModelManager:
        """Rank 0's models in a group that can take a job: the running group, or a new one in place of one that
        is not whole or not in step."""
        if self.followers is not None and self.manager is not None:
            cause = self.followers.failed() or (
                None if self.followers.in_step(IN_STEP_WAIT_S) else "the other ranks did not finish the last job"
            )
            if cause is None:
                return self.manager
            log.warning("job group %s on %s: %s; starting a new group", self.spec, ", ".join(self.devices), cause)
            self.close()
            self.on_restart(cause)
        self.followers = Followers(self.spec, self.weights_dir, self.runtime, self.devices)
        group = self.followers.start()
        self.manager = ModelManager(
            self.weights_dir, device=self.devices[0], max_models=self.max_models, runtime=self.runtime, group=group
        )
        log.info("job group %s on %s started", self.spec, ", ".join(self.devices))
        return self.manager

    def interrupted(self) -> str | None:
        """After rank 0's job raised: which rank exited during it (the job was interrupted, not at fault), if any."""
        return self.followers.failed(EXIT_WAIT_S) if self.followers is not None else None

    def describe(self) -> dict[str, Any]:
        """What the fleet view and the metrics show of the group."""
        return {"devices": self.devices, "parallel": str(self.spec)}

    def close(self) -> None:
        if self.followers is not None:
            self.followers.close()
        self.followers, self.manager = None, None
