"""``--workers N``: N collector processes in one ``$share`` group, started and supervised by one command.

One collector process is bound by one Python interpreter: paho's own protocol handling costs about as much per
message as a bare subscriber's whole process (bench/collector.py), and validation and writing share that
interpreter's lock. N processes, each a complete collector with its own stable client id ``<client-id>-<i>`` (so
each keeps its broker session across restarts), join ``$share/<group>/bems/v1/+/+/reading`` and mosquitto deals
the messages round-robin among them. Every guarantee holds per process: a message is acknowledged only once its
reading is durable, by the process it was delivered to; the store's (meter, time) key keeps the store exact.

A worker that exits is started again (its share waits in its broker session meanwhile). Keep N fixed once
chosen: a member that never returns strands its share until its session expires (``--session-expiry-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import sys
import time
from multiprocessing.process import BaseProcess

from bems import stage
from bems.errors import BemsError, ConfigError
from bems.settings import secret_values
from collector.service import STOP_GRACE_S, run
from collector.settings import DEFAULT_GROUP, CollectorSettings

log = logging.getLogger("bems.collector")

CONFIG_EXIT = 2  # a worker's settings are wrong: restarting it would not help
EARLY_S = 10.0  # a worker failing this soon after its start counts against the restart backoff


def recommended_workers() -> int:
    """One worker per CPU this process may run on: each worker is bound by one interpreter."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_settings(settings: CollectorSettings, index: int) -> CollectorSettings:
    """Worker ``index`` (1-based): its own client id (and so disk buffer) and metrics port, the shared group."""
    update: dict[str, object] = {"workers": 1, "client_id": f"{settings.client_id}-{index}",
                                 "shared_group": settings.shared_group or DEFAULT_GROUP,
                                 "maintenance": settings.maintenance and index == 1}  # one rollup pass is enough
    if settings.metrics_port:  # 0 (any free port) stays 0
        update["metrics_port"] = settings.metrics_port + index - 1
    return settings.model_copy(update=update)


def _worker_main(settings: CollectorSettings) -> None:
    """Entry point of a worker process (spawned: a fresh interpreter, no threads inherited)."""
    stage.configure_logging(settings.log_level, secret_values(settings))
    try:
        asyncio.run(stage._until_signal(run(settings)))
    except BemsError as exc:
        print(f"collector {settings.client_id}: {exc}", file=sys.stderr)
        sys.exit(CONFIG_EXIT)


class Supervisor:
    """Starts the workers, restarts one that exits (backing off if it keeps failing), stops them all on exit."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, BaseProcess] = {}
        self.started: dict[int, float] = {}
        self.delay: dict[int, float] = {}
        self.stopping = False

    def spawn(self, index: int) -> None:
        if self.stopping:
            return
        ws = worker_settings(self.settings, index)
        proc = self.ctx.Process(target=_worker_main, args=(ws,), name=f"collector-{ws.client_id}")
        proc.start()
        self.procs[index], self.started[index] = proc, time.monotonic()

    async def run(self) -> None:
        n = self.settings.workers
        log.info("starting %d collector workers (%s-1..%d) in $share group %r", n, self.settings.client_id, n,
                 self.settings.shared_group or DEFAULT_GROUP)
        for i in range(1, n + 1):
            self.spawn(i)
        while True:
            await asyncio.sleep(0.5)
            for i, proc in list(self.procs.items()):
                if proc.is_alive():
                    continue
                code, early = proc.exitcode, time.monotonic() - self.started[i] < EARLY_S
                if code == CONFIG_EXIT and early:
                    raise ConfigError(f"collector worker {self.settings.client_id}-{i} could not start (its message "
                                      "is above); fix the settings and start again")
                delay = self.delay.get(i, 1.0) if early else 1.0
                self.delay[i] = min(delay * 2, 30.0)
                log.error("collector worker %s-%d exited with code %s; starting it again in %.0f s (its share waits "
                          "in its broker session)", self.settings.client_id, i, code, delay)
                del self.procs[i]
                asyncio.get_running_loop().call_later(delay, self.spawn, i)

    def stop(self) -> None:
        """SIGTERM every worker (each finishes its batch and acknowledges it), then wait for them."""
        self.stopping = True
        for proc in list(self.procs.values()):
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S + 15
        for proc in list(self.procs.values()):
            proc.join(max(deadline - time.monotonic(), 0.1))
            if proc.is_alive():
                log.error("collector worker %s ignored SIGTERM; killing it (its unacknowledged messages come "
                          "again)", proc.name)
                proc.kill()
                proc.join()


async def run_workers(settings: CollectorSettings) -> None:
    supervisor = Supervisor(settings)
    try:
        await supervisor.run()
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(asyncio.to_thread(supervisor.stop))


async def launch(settings: CollectorSettings) -> None:
    """What ``python -m collector`` runs: the collector itself, or ``--workers`` processes of it."""
    await (run_workers(settings) if settings.workers > 1 else run(settings))
