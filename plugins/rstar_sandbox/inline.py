"""Inline jobs: closed programs run one after the other in one process per batch, not one fork each.

Most steps are short arithmetic, for which a fork, five pipes and a temporary directory cost hundreds of times
more than the program. So, with the option ``inline`` (on by default), the verifier first offers the jobs that
may run inline (`may_inline`) to its workers in batches (`run_inline`: one lane per worker, each taking batches
off one queue). A worker forks one child per batch, which runs each program that an allow-list check accepts
(`rstar_sandbox.worker.closed_program`: allowed syntax, builtins and attribute names; imports of
math/cmath/Fraction only) with only the allowed builtins, its output captured and capped, a SIGALRM deadline
and a soft address-space limit, and answers ``fork`` for every other program (`run_batch`); those then run as
forked jobs (`rstar_sandbox.forked`). The verdicts are the same either way (a test compares them).

Answers come back in groups (`rstar_sandbox.worker.Answers`), checked against what a worker sends before they
are believed (`_inline_answers`). A batch whose process dies or hangs gets no verdicts from it: its unanswered
jobs are forked, each judged alone, and its worker is replaced. A worker that dies before it can even take a
batch is replaced at most `WORKER_TRIES` times for the same job, whose verdict is then an ``error``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from typing import Any, Literal

from rstar.types import CodeJob, Verdict
from rstar_sandbox.forked import decode_output, output_limit_error, timeout_error
from rstar_sandbox.pool import KILL_GRACE_S, Worker, WorkerPool, json_object, receive
from rstar_sandbox.worker import clean_text, records

INLINE_BATCH_JOBS = 512
"""Most jobs in one inline batch (the lanes split smaller queues evenly)."""
INLINE_BATCH_CHARS = 256 * 1024
"""Most program text in one inline batch; a longer program is forked."""
INLINE_MAX_OUTPUT_BYTES = 4 * 1024 * 1024
"""Jobs that may print more than this are forked (an inline answer is held in memory whole)."""
INLINE_KILL_GRACE_S = 0.5
"""How long after its deadline an inline program that its worker's alarm did not stop (C code) may run."""
INLINE_STATUSES = frozenset(["ok", "error", "memory", "timeout", "output_limit", "killed"])
WORKER_TRIES = 3
"""Workers that may fail to take the same job (die before it reaches them) before the job gets an ``error``."""


def may_inline(job: CodeJob) -> bool:
    """Whether the worker may be offered ``job`` inline (it still checks that the program is closed)."""
    return (
        len(job.program) <= INLINE_BATCH_CHARS
        and job.max_output_bytes is not None
        and job.max_output_bytes <= INLINE_MAX_OUTPUT_BYTES
        and (job.program.isascii() or _is_utf8(job.program))  # a forked job reads lone surrogates as U+FFFD
    )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- running batches -------------------------------------------------------------------------------


async def run_inline(pool: WorkerPool, jobs: list[CodeJob], todo: list[int], verdicts: list[Verdict | None]) -> None:
    """Offer the jobs ``todo`` to the workers in batches; fill in the verdicts of those run inline."""
    queue = collections.deque(todo)
    lanes = min(pool.max_workers, len(todo))
    size = max(1, min(INLINE_BATCH_JOBS, -(-len(todo) // lanes)))  # an even share each: one batch per lane
    await asyncio.gather(*(_lane(pool, jobs, queue, size, verdicts) for _ in range(lanes)))


async def _lane(
    pool: WorkerPool, jobs: list[CodeJob], queue: collections.deque[int], size: int, verdicts: list[Verdict | None]
) -> None:
    """One worker at a time takes batches off ``queue`` until it is empty; a worker that must go is replaced."""
    async with pool.semaphore():
        worker: Worker | None = None
        refusals: collections.Counter[int] = collections.Counter()
        try:
            while queue:
                if worker is None:
                    worker = await pool.acquire()
                batch: list[int] = []
                room = INLINE_BATCH_CHARS
                while queue and len(batch) < size and (not batch or len(jobs[queue[0]].program) <= room):
                    room -= len(jobs[queue[0]].program)
                    batch.append(queue.popleft())
                outcome = await run_batch(worker, jobs, batch, queue, verdicts)
                if outcome == "refused":  # the worker could not even take the batch: bounded retries
                    refusals[batch[0]] += 1
                    if refusals[batch[0]] >= WORKER_TRIES:
                        queue.remove(batch[0])
                        verdicts[batch[0]] = Verdict("error", "", _refused_error(), 0.0)
                if outcome != "healthy":
                    pool.discard(worker)  # it died, was killed, or asked to retire: replace it
                    worker = None
        finally:
            if worker is not None:
                pool.release(worker)


async def run_batch(
    worker: Worker,
    jobs: list[CodeJob],
    batch: list[int],
    queue: collections.deque[int],
    verdicts: list[Verdict | None],
) -> Literal["healthy", "retire", "lost", "refused"]:
    """Run one batch on ``worker``: "healthy" when it may take the next, else why it must be replaced. Jobs
    it could not take are back in ``queue`` ("refused"); jobs it did not answer keep no verdict (forked)."""
    loop = asyncio.get_running_loop()
    fields = ("program", "timeout_s", "memory_mb", "max_output_bytes")
    payload = json.dumps({"inline": [{f: getattr(jobs[i], f) for f in fields} for i in batch]}).encode()
    sock = worker.control
    waiting = list(batch)  # answered in order, in groups
    try:
        sock.setblocking(False)
        try:
            for record in records(payload):
                await loop.sock_sendall(sock, record)
        except OSError:  # the worker died before it got the batch
            worker.kill()
            queue.extendleft(reversed(waiting))
            return "refused"
        started = time.monotonic()
        while True:
            # Answers come in groups (`rstar_sandbox.worker.Answers`), but never held longer than a few ms: the
            # job running is taken to be the first waiting. Where it is a later one with a longer time limit,
            # the worker may be given up too early; that costs time, not truth (the jobs are then forked).
            timeout = (jobs[waiting[0]].timeout_s or 0.0) + INLINE_KILL_GRACE_S if waiting else KILL_GRACE_S
            messages, closed = await receive(sock, worker.partial, started + timeout)
            for message in messages:
                if not waiting:
                    done = json_object(message)
                    if done is not None and done.get("done"):
                        return "retire" if done.get("retire") else "healthy"
                    closed = True  # not what a worker sends: trust it no further
                    break
                answers = _inline_answers(message, len(waiting))
                if answers is None:
                    closed = True
                    break
                started = time.monotonic()
                for answer, output in answers:
                    index = waiting.pop(0)
                    if not answer.get("fork"):
                        verdicts[index] = _inline_verdict(jobs[index], answer, output)
            if closed or not messages:
                # It died, or is stuck past every deadline (in C code, or catching the alarm). Which of the
                # jobs it had not answered did that is not known (answers travel in groups), so none gets a
                # verdict here: each is forked and gets its own.
                worker.kill()
                return "lost"
    finally:
        if not worker.closed:
            with contextlib.suppress(OSError):
                sock.setblocking(True)


# --- answers ---------------------------------------------------------------------------------------


def _refused_error() -> str:
    return f"ProcessError: {WORKER_TRIES} sandbox workers in a row died before they could take this job"


def _inline_verdict(job: CodeJob, answer: dict[str, Any], output: bytes) -> Verdict:
    status = answer["status"]
    duration = float(answer.get("duration_s", 0.0))
    assert job.max_output_bytes is not None
    overflow = status == "output_limit" or len(output) > job.max_output_bytes
    text = (
        decode_output(output[: job.max_output_bytes], complete=False) if overflow else output.decode("utf-8", "replace")
    )
    if overflow:
        return Verdict("output_limit", text, output_limit_error(job), duration)
    if status == "timeout":
        return Verdict("timeout", text, timeout_error(job), duration)
    return Verdict(status, text, clean_text(str(answer.get("error", ""))), duration)


def _inline_answers(message: bytes, most: int) -> list[tuple[dict[str, Any], bytes]] | None:
    """The answers in one message of an inline batch, or None when it is not what a worker sends."""
    line, _, outputs = message.partition(b"\n")
    try:
        headers = json.loads(line)
    except ValueError:
        return None
    if not isinstance(headers, list) or not 0 < len(headers) <= most:
        return None
    answers, offset = [], 0
    for header in headers:
        if not isinstance(header, dict) or not (header.get("fork") or header.get("status") in INLINE_STATUSES):
            return None
        size = header.get("n")
        if not isinstance(size, int) or size < 0 or offset + size > len(outputs):
            return None
        answers.append((header, outputs[offset : offset + size]))
        offset += size
    return answers if offset == len(outputs) else None
