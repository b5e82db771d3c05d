"""The ``docker`` step verifier: the ``subprocess`` verifier's warm workers, each in its own container.

Each of up to ``max_workers`` long-lived containers runs the same worker as the ``subprocess`` verifier
(`rstar_sandbox.worker`): it imports the ``preload`` modules once and forks one child per job, so a
job costs no container start and no ``docker exec``. The containers have no network, a read-only
root, a tmpfs ``/tmp`` (the jobs' working directories), memory, CPU and pids limits, every capability
dropped, ``no-new-privileges``, and run under a uid of their own (one per container, so that no process
limit is shared; the worker is non-dumpable, so the jobs, under the same uid, cannot touch its memory). Jobs
reach a worker over a Unix socket in a
directory bound read-only into its container; the job's pipes are passed over it, so output caps,
deadlines (enforced from outside: the worker kills the job's tree, else the container is killed and
replaced) and verdicts work exactly as in the ``subprocess`` verifier, and the same programs give the
same verdicts.

Needs the Docker SDK (``pip install 'rstar[docker]'``) and a running engine. The image must have
``python3`` (3.8+); ``rstar sandbox build-image`` builds one offline from Debian packages.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from typing import Any

from pydantic import Field

from rstar.errors import RstarError
from rstar_sandbox.isolation import SANDBOX_SCRATCH, child_env, private_uid
from rstar_sandbox.pool import DEFAULT_PRELOAD, START_TIMEOUT_S, WORKER_SOURCE_PATH, Worker, WorkerPool, hello
from rstar_sandbox.states import StateCache
from rstar_sandbox.subprocess_verifier import StateOptions, SubprocessVerifier

DEFAULT_IMAGE = "rstar-sandbox:latest"
LABEL = "rstar.sandbox"
"""Every container this verifier starts carries this label (tests and clean-ups find them by it)."""


class DockerOptions(StateOptions):
    """Options of the ``docker`` verifier. The job limits are defaults for the jobs it builds."""

    timeout_s: float = Field(10.0, gt=0, description="default wall-clock limit of a job, in seconds")
    memory_mb: int = Field(
        2048, ge=16, description="default memory a job may map (RLIMIT_AS) on top of the warm worker's, in MiB"
    )
    max_output_bytes: int = Field(65536, ge=0, description="default cap on a job's stdout, in bytes")
    max_workers: int = Field(2, ge=1, description="jobs run at the same time (one container each)")
    image: str = Field(DEFAULT_IMAGE, description="image of the containers; must have python3")
    python: str = Field("python3", description="Python interpreter inside the image")
    preload: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PRELOAD),
        description="modules each warm worker imports once, so that jobs importing them pay nothing",
    )
    container_memory_mb: int = Field(3072, ge=64, description="memory limit of one container (cgroup), in MiB")
    cpus: float = Field(1.0, gt=0, description="CPUs one container may use")
    max_processes: int = Field(
        64,
        ge=8,
        description="processes and threads one job may run (RLIMIT_NPROC); the container pids limit is 2x + 16",
    )
    tmpfs_mb: int = Field(256, ge=16, description="size of the container's /tmp (the jobs' working directories)")
    max_file_mb: int = Field(64, ge=1, description="largest file a job may write (RLIMIT_FSIZE), in MiB")
    max_open_files: int = Field(256, ge=16, description="files a job may hold open at once (RLIMIT_NOFILE)")
    inline: bool = Field(
        True,
        description="run closed programs (an allow-list of syntax, builtins and attributes: arithmetic with math, "
        "cmath, Fraction) in one process per batch instead of one per program: same verdicts, ~100x faster on "
        "short arithmetic",
    )


def docker_client() -> Any:
    """A client of the Docker engine (``docker.from_env``) that answered a ping; an `RstarError` says why not."""
    try:
        import docker
    except ImportError as exc:
        raise RstarError("docker verifier: the Docker SDK is missing; pip install 'rstar[docker]'") from exc
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise RstarError(f"docker verifier: no Docker engine answers: {exc}") from exc
    return client


def unavailable_reason(image: str = DEFAULT_IMAGE) -> str:
    """Why the docker verifier cannot run here ('' when it can): no SDK, no engine, or no image."""
    try:
        client = docker_client()
    except RstarError as exc:
        return str(exc)
    try:
        client.images.get(image)
    except Exception:
        return f"docker verifier: image {image!r} not found (build it with: rstar sandbox build-image)"
    return ""


class DockerVerifier(SubprocessVerifier):
    """Runs each `rstar.types.CodeJob` in a child forked from a warm worker in a container; see the module."""

    Options = DockerOptions  # type: ignore[assignment]

    def __init__(self, options: DockerOptions | None = None) -> None:
        opts = options if options is not None else DockerOptions()
        self.options = opts  # type: ignore[assignment]
        self._docker = docker_client()
        try:
            self._docker.images.get(opts.image)
        except Exception as exc:
            raise RstarError(
                f"docker verifier: image {opts.image!r} not found ({exc}); build one offline with "
                "'rstar sandbox build-image' or pull a Python image"
            ) from exc
        self._python = opts.python
        self.isolation = "container"
        self._worker_source = WORKER_SOURCE_PATH.read_text(encoding="utf-8")
        WorkerPool.__init__(self, opts.max_workers)  # not SubprocessVerifier's: no bubblewrap, no local interpreter
        self.states = StateCache(opts.states)

    def start_worker(self) -> Worker:
        options: DockerOptions = self.options  # type: ignore[assignment]
        uid = private_uid()  # a uid of its own per container: no process limit or file is shared with another
        config = self._worker_config(None, SANDBOX_SCRATCH)
        socket_dir = tempfile.mkdtemp(prefix="rstar-docker-")
        os.chmod(socket_dir, 0o755)
        path = os.path.join(socket_dir, "control")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        container = None
        try:
            listener.bind(path)
            os.chmod(path, 0o777)
            listener.listen(1)
            command = [options.python, "-s", "-B", "-X", "utf8", "-c", self._worker_source, "/run/rstar/control"]
            container = self._docker.containers.run(
                options.image,
                [*command, json.dumps(config)],
                detach=True,
                init=True,  # the worker is not PID 1, so a job that kills it ends the container
                user=f"{uid}:{uid}",
                network_mode="none",
                read_only=True,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={options.tmpfs_mb}m,mode=0700,uid={uid},gid={uid}"},
                volumes={socket_dir: {"bind": "/run/rstar", "mode": "ro"}},
                mem_limit=f"{options.container_memory_mb}m",
                memswap_limit=f"{options.container_memory_mb}m",
                nano_cpus=int(options.cpus * 1e9),
                pids_limit=options.max_processes * 2 + 16 + (options.states if options.state == "fork" else 0),
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                environment=child_env(),
                working_dir="/tmp",
                labels={LABEL: "1"},
                ipc_mode="none",
            )
            listener.settimeout(START_TIMEOUT_S)
            control, _ = listener.accept()
            if hello(control) is None:
                raise OSError("the worker closed its socket without saying it was ready")
        except Exception as exc:
            logs = ""
            if container is not None:
                with contextlib.suppress(Exception):
                    logs = container.logs().decode("utf-8", "replace").strip()[-2000:]
                _remove(container)
            raise RstarError(f"docker verifier: the sandbox container failed to start: {exc} {logs}".strip()) from exc
        finally:
            listener.close()
            shutil.rmtree(socket_dir, ignore_errors=True)
        return _ContainerWorker(container, control)


class _ContainerWorker(Worker):
    def __init__(self, container: Any, control: socket.socket) -> None:
        super().__init__(None, control, "container")
        self.container = container

    def kill(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.control.shutdown(socket.SHUT_RDWR)
        self.control.close()
        _remove(self.container)


def _remove(container: Any) -> None:
    with contextlib.suppress(Exception):
        container.remove(force=True)
