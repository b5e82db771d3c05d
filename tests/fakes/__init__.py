"""The fakes of the test suite, in one place, each named as a fake: stand-ins for real components in tests
that are about something else (the engine, a strategy, the extraction). Tests about a component use the real
one."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from rstar.types import CodeJob, Reference, Verdict


class FakeInProcessVerifier:
    """Test fake: runs programs with in-process ``exec`` (unsafe; only for trusted test programs)."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def run(self, jobs: Sequence[CodeJob]) -> list[Verdict]:
        self.batches.append(len(jobs))
        verdicts = []
        for job in jobs:
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    exec(job.program, {})
                verdicts.append(Verdict("ok", buf.getvalue()))
            except Exception as exc:
                verdicts.append(Verdict("error", buf.getvalue(), f"{type(exc).__name__}: {exc}"))
        return verdicts


class FakeExactChecker:
    """Test fake: equivalence is equality of stripped strings."""

    async def check(self, pairs: Sequence[tuple[str, Reference]]) -> list[bool]:
        out = []
        for pred, ref in pairs:
            refs = ref if isinstance(ref, list) else [ref]
            out.append(any(r is not None and pred.strip() == str(r).strip() for r in refs))
        return out
