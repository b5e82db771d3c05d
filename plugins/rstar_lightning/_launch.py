"""Several training processes on one machine (``strategy: ddp`` or ``fsdp`` with ``devices`` > 1).

Lightning's own launcher starts the extra processes by running the current command again
(``sys.argv``). That is right for a training script and wrong for everything else that calls a
trainer: under ``rstar run`` each extra process would run the whole pipeline again (and go on to
search the next round), under pytest it would run the test suite, in a notebook there is no command.

So the trainers launch their own: :func:`local_ranks` starts ranks 1..N-1 of this machine as
``python -m rstar_lightning._launch JOB``, where ``JOB`` (JSON) names the trainer class, its options,
the data file, the initial model and the output folder. Each worker runs that trainer's ``fit`` and
exits; the calling process is rank 0 and runs ``fit`` in-process as usual. The environment variables
Lightning reads (``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) are
set for all of them, so Lightning sees processes that were "created externally" and starts none.

Several machines (``num_nodes`` > 1) run the same command, each with node 0's ``MASTER_ADDR`` and ``MASTER_PORT``
and its own ``NODE_RANK`` in the environment (`check_nodes` says which is missing); each starts its own ranks
as above, and only global rank 0 (node 0's rank 0) writes.

Rank 0 waits for its workers before it returns, so no process outlives ``fit``. When a worker fails,
the others are stopped and rank 0 raises `RstarError`; when rank 0 fails, its workers are stopped.
Under an external launcher (torchrun, SLURM; ``LOCAL_RANK`` already set) nothing is started.

Why not ``torch.distributed.launcher.api.elastic_launch`` (torchrun's engine)? Tried with torch 2.13 on
two gloo ranks (``LaunchConfig(nproc_per_node=2, rdzv_backend="c10d", rdzv_endpoint="localhost:0",
max_restarts=0)``, a command entrypoint): it stops the other ranks when one raises, exits with a status or
is killed (SIGKILL: reported as such, the rest stopped, SIGKILL after its 30 s grace), and its
``ChildFailedError`` lists every rank's pid and exit code. It does not cover what this module does here:

* a rank that hangs after the others finished is waited for without end (rank 0 exited 0, rank 1 slept:
  still waiting after 88 s, until killed from outside); here rank 0 stops it after ``FINISH_TIMEOUT_S``
  and says which rank it was (``test_a_worker_that_outlives_rank_0_is_stopped_and_named``);
* the rank that failed first is not reliably the one named: failures are timed to the second and ties
  go to the lowest rank, so when rank 1 raised and rank 0 died a few ms later of gloo's "Connection
  closed by peer", the "Root Cause" was rank 0 in 3 runs of 3 without ``@record`` and in 1 of 2 with it;
  here the failed worker is named (``test_a_failing_worker_fails_the_run_naming_it``);
* it leaves the calling process changed, which ``rstar run`` goes on using after training: SIGINT,
  SIGTERM, SIGHUP and SIGQUIT keep its handler (Ctrl-C then raises its ``SignalException``, not
  ``KeyboardInterrupt``) and ``TORCHELASTIC_SIGNALS_TO_HANDLE`` stays in ``os.environ``.

Every rank would also be a child process, so rank 0's errors (bad data, say) would reach the caller as
a ``ChildFailedError`` instead of the `RstarError` raised.
"""

from __future__ import annotations

import _thread
import contextlib
import importlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist
from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.fabric.plugins.environments.lightning import find_free_network_port
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning_utilities.core.rank_zero import rank_zero_only

from rstar.errors import ConfigError, RstarError
from rstar_lightning._fsdp import FSDPStrategy
from rstar_lightning.options import TrainOptions

log = logging.getLogger(__name__)

ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
"""What Lightning's default cluster environment reads; set here for every rank, restored afterwards."""

MANAGED_ENVIRONMENTS = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)
"""The cluster managers Lightning detects (as its Trainer does) and takes the nodes' rendezvous from."""

STOP_GRACE_S = 10.0
"""How long a stopped worker gets to exit after SIGTERM before it is killed."""

FAILURE_WAIT_S = 2.0
"""When rank 0 fails, how long it waits for a worker's own exit status (the likely cause) before stopping them."""

FINISH_TIMEOUT_S = 300.0
"""How long rank 0, done, waits for its workers to finish (they save nothing, so they end at once)."""


def processes_per_node(options: TrainOptions) -> int:
    """How many processes Lightning would start on this machine for ``options``, or 1 when it starts none
    (one device, a spawning strategy, or processes created by an external launcher)."""
    chatty = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # "GPU available: ..." is said later
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    zero: Any = rank_zero_only  # constructing a Trainer sets zero.rank, which rank-0-only logging reads
    rank = zero.rank
    try:
        probe = pl.Trainer(
            accelerator=options.accelerator,
            devices=options.devices,
            num_nodes=options.num_nodes,
            strategy=lightning_strategy(options),
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    except (ValueError, MisconfigurationException) as exc:
        raise ConfigError([f"trainer.accelerator/devices/strategy/num_nodes: {exc}"]) from None
    finally:
        chatty.setLevel(level)
        zero.rank = rank
    launcher = probe.strategy.launcher  # the one that would run sys.argv again, unless LOCAL_RANK is set
    if not isinstance(launcher, _SubprocessScriptLauncher) or launcher.cluster_environment.creates_processes_externally:
        return 1
    return launcher.num_processes


def check_nodes(options: TrainOptions) -> None:
    """Several machines (``num_nodes`` > 1) meet at ``MASTER_ADDR:MASTER_PORT`` (node 0's), each told its
    ``NODE_RANK``; without them each machine would make up its own and wait for the others forever. A cluster
    manager that Lightning detects (SLURM, torchrun, ...) sets them itself: then nothing is asked."""
    n = options.num_nodes
    if n <= 1 or "LOCAL_RANK" in os.environ or any(env.detect() for env in MANAGED_ENVIRONMENTS):
        return
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if not os.environ.get(key)]
    if missing:
        raise ConfigError(
            [
                f"trainer.num_nodes={n}: set {', '.join(missing)} in the environment of the command on every "
                f"machine: MASTER_ADDR and MASTER_PORT of node 0 (the same everywhere), NODE_RANK 0 to {n - 1}"
            ]
        )
    rank = os.environ["NODE_RANK"]
    if not rank.isdigit() or int(rank) >= n:
        raise ConfigError([f"trainer.num_nodes={n}: NODE_RANK={rank} is not one of 0 to {n - 1}"])


def lightning_strategy(options: TrainOptions) -> Any:
    """The ``strategy`` argument of ``pl.Trainer`` for ``options.strategy``."""
    if options.strategy == "fsdp":
        return FSDPStrategy(sharding_strategy="FULL_SHARD", state_dict_type="full")
    return options.strategy


@contextlib.contextmanager
def local_ranks(trainer: Any, data: Path, init_model: str, out_dir: Path) -> Iterator[int]:
    """Start this machine's ranks 1..N-1 for ``trainer.fit(data, init_model, out_dir)``; yield N.

    The body is rank 0's own ``fit``. On leaving, rank 0 waits for the workers, destroys the process
    group and restores the environment, so the same process can train again (``rstar run`` trains the
    SFT model, then the PPM).

    With one process, a strategy that still sets up a process group (``fsdp`` on one device) leaves
    the process as it found it too: the group destroyed, ``MASTER_PORT`` and the rest restored (a port
    left in the environment would be taken by the next run's processes, still bound by this one).
    Under an external launcher nothing is touched.
    """
    check_nodes(trainer.options)
    count = processes_per_node(trainer.options)
    if count <= 1:
        saved = {key: os.environ.get(key) for key in ENV_KEYS}
        ours = "LOCAL_RANK" not in os.environ and not _process_group_initialized()
        try:
            yield 1
        finally:
            if ours:
                _destroy_process_group()
                _restore(saved)
        return
    job = {
        "trainer": f"{type(trainer).__module__}:{type(trainer).__qualname__}",
        "options": trainer.options.model_dump(mode="json"),
        "data": str(data),
        "init_model": init_model,
        "out_dir": str(out_dir),
    }
    saved = {key: os.environ.get(key) for key in ENV_KEYS}
    workers: list[subprocess.Popen[bytes]] = []
    watcher = _Watcher(workers)
    try:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            os.environ["MASTER_PORT"] = str(find_free_network_port())
        os.environ.setdefault("NODE_RANK", "0")
        os.environ["WORLD_SIZE"] = str(count * trainer.options.num_nodes)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        for rank in range(1, count):
            command = [sys.executable, "-m", "rstar_lightning._launch", json.dumps(job)]
            workers.append(subprocess.Popen(command, env={**env, "LOCAL_RANK": str(rank)}))
        log.info("started %d training worker(s): pids %s", len(workers), [w.pid for w in workers])
        os.environ["LOCAL_RANK"] = "0"
        watcher.start()
        yield count
        watcher.stop()
        _finish(workers)
    except BaseException as exc:
        watcher.stop()
        own = isinstance(exc, RstarError)  # bad data or options: every rank stops with the same message
        failure = watcher.failure or (None if own else _first_failure(workers, FAILURE_WAIT_S))
        _stop(workers)
        if failure is not None:  # rank 0's error is most likely the lost connection to the failed worker
            raise RstarError(f"{failure} (its error is in the output above)") from exc
        raise
    finally:
        _destroy_process_group()
        _restore(saved)


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class _Watcher(threading.Thread):
    """Watches rank 0's workers; when one fails, stops the others and interrupts rank 0.

    Rank 0 may be blocked where Python cannot interrupt it (waiting for the dead worker to join the
    process group); if it has not given up within ``2 * STOP_GRACE_S``, the process exits with status 1.
    """

    def __init__(self, workers: list[subprocess.Popen[bytes]]) -> None:
        super().__init__(name="rstar-train-watcher", daemon=True)
        self.workers = workers
        self.failure: str | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._done.wait(0.5):
            for rank, worker in enumerate(self.workers, start=1):
                code = worker.poll()
                if code is not None and code != 0:
                    self._fail(f"trainer: training worker rank {rank} (pid {worker.pid}) exited with status {code}")
                    return

    def _fail(self, message: str) -> None:
        with self._lock:  # never interrupt rank 0 once it has stopped watching
            if self._done.is_set():
                return
            self.failure = message
            log.error("%s; stopping the other ranks", message)
            _stop(self.workers)
            _thread.interrupt_main()
        if not self._done.wait(2 * STOP_GRACE_S):
            log.error("rank 0 is stuck waiting for the failed worker; exiting")
            os._exit(1)

    def stop(self) -> None:
        with self._lock:
            self._done.set()


def _first_failure(workers: list[subprocess.Popen[bytes]], wait_s: float) -> str | None:
    """The first worker that exited with an error within ``wait_s``, described; None if none did."""
    deadline = time.monotonic() + wait_s
    while True:
        for rank, worker in enumerate(workers, start=1):
            code = worker.poll()
            if code is not None and code != 0:
                return f"trainer: training worker rank {rank} (pid {worker.pid}) exited with status {code}"
        if time.monotonic() >= deadline or all(w.poll() is not None for w in workers):
            return None
        time.sleep(0.1)


def _finish(workers: list[subprocess.Popen[bytes]]) -> None:
    """Wait for the workers of a finished run; raise if one failed or hangs."""
    deadline = time.monotonic() + FINISH_TIMEOUT_S
    for rank, worker in enumerate(workers, start=1):
        try:
            code = worker.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _stop(workers)
            raise RstarError(
                f"trainer: training worker rank {rank} (pid {worker.pid}) did not finish within "
                f"{FINISH_TIMEOUT_S:.0f} s after rank 0; it was stopped"
            ) from None
        if code != 0:
            _stop(workers)
            raise RstarError(f"trainer: training worker rank {rank} (pid {worker.pid}) exited with status {code}")


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM the workers still running, SIGKILL those still there after ``STOP_GRACE_S``; reap all."""
    running = [w for w in workers if w.poll() is None]
    for worker in running:
        worker.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in running:
        try:
            worker.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _process_group_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _destroy_process_group() -> None:
    if _process_group_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """A worker: ``python -m rstar_lightning._launch JOB`` runs ``JOB``'s trainer's ``fit`` as rank ``LOCAL_RANK``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or "LOCAL_RANK" not in os.environ:
        print("usage: LOCAL_RANK=N python -m rstar_lightning._launch JOB_JSON (started by the trainers)")
        return 2
    job = json.loads(args[0])
    module, _, name = job["trainer"].partition(":")
    cls: Any = getattr(importlib.import_module(module), name)
    try:
        trainer = cls(cls.Options.model_validate(job["options"]))
        trainer.fit(Path(job["data"]), job["init_model"], Path(job["out_dir"]))
    except RstarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        _destroy_process_group()
    return 0


if __name__ == "__main__":
    status = main()
    # The worker has written nothing of its own (rank 0 saves), so the interpreter's teardown is skipped:
    # torch's native threads (gloo, FSDP) can still be running when their objects are freed there,
    # which aborts the process after a successful run (status -6 or -11, "terminate called without an
    # active exception"), about one run in five with FSDP on CPUs.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
