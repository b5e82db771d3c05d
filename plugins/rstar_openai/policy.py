"""The ``openai`` policy: raw-text completions from any OpenAI-compatible server.

``vllm serve``, SGLang's server and llama.cpp's server all speak ``POST /v1/completions``. rstar needs
to know *which* stop string ended a sample (the step format keeps it in the text), and servers
differ in whether they say so, hence two ways to stop:

* ``stop_mode: server`` — the server stops on the strings; rstar asks it to keep the stop string in
  the text (``include_stop_str_in_output``, honoured by vLLM and SGLang) and reads which one ended
  the sample from the text or from vLLM's ``stop_reason``.
* ``stop_mode: client`` — for servers that do not report the stop string (llama.cpp): rstar streams
  the completion, cuts it after the first stop string itself and closes the stream, which makes
  the server stop generating. ``num_tokens`` is then the number of streamed chunks (one token each
  on these servers).

Requests run concurrently (``max_concurrency`` at a time), with a timeout, and are retried (by
``tenacity``) with exponential backoff and jitter on connection errors, timeouts, 429 and 5xx answers.
``extra_body`` is merged into every request, for server-specific parameters (``top_k``,
``repetition_penalty``, ...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from rstar.backends import find_stop
from rstar.errors import MissingExtraError, RstarError
from rstar.options import Options
from rstar.types import GenerationRequest, GenerationResult, Sample

log = logging.getLogger(__name__)


class OpenAIOptions(Options):
    """Options of the ``openai`` policy."""

    base_url: str = Field(description="the server's API root, e.g. 'http://127.0.0.1:8000/v1'")
    model: str = Field("default", description="the model name the server expects in requests")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key, if any")
    stop_mode: Literal["server", "client"] = Field(
        "server", description="'server' (vLLM, SGLang) or 'client' (llama.cpp: rstar streams and cuts)"
    )
    native_n: bool = Field(
        True, description="send n in one request (vLLM, SGLang); false: one request per sample with seed+i"
    )
    max_concurrency: int = Field(16, ge=1, description="requests in flight at once")
    timeout_s: float = Field(300.0, gt=0, description="time limit of one HTTP request")
    max_retries: int = Field(3, ge=0, description="retries of a failed request (connection, timeout, 429, 5xx)")
    backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubled on each retry, with jitter")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="merged into every request body")


class OpenAIPolicy:
    """A :class:`rstar.interfaces.PolicyBackend` over HTTP."""

    Options = OpenAIOptions
    batches_itself = True
    """The server batches continuously: the engine sends requests as they come."""

    def __init__(self, options: OpenAIOptions) -> None:
        try:
            import httpx
        except ImportError:
            raise MissingExtraError("policy 'openai'", "httpx", "openai") from None
        self.options = options
        self._httpx = httpx
        key = os.environ.get(options.api_key_env)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._url = options.base_url.rstrip("/") + "/completions"

    # --- the batch ---------------------------------------------------------------------------

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One HTTP client (connection pool) per batch; ``max_concurrency`` requests in flight."""
        limit = asyncio.Semaphore(self.options.max_concurrency)
        async with self._httpx.AsyncClient(timeout=self.options.timeout_s, headers=self._headers) as client:
            return list(await asyncio.gather(*(self._one(client, limit, r) for r in requests)))

    async def _one(self, client: Any, limit: asyncio.Semaphore, req: GenerationRequest) -> GenerationResult:
        if self.options.native_n and self.options.stop_mode == "server":
            return await self._call(client, limit, req, req.n, req.seed)
        parts = await asyncio.gather(
            *(
                self._call(client, limit, req, 1, None if req.seed is None else req.seed * 1000003 + i)
                for i in range(req.n)
            )
        )
        return GenerationResult(
            tuple(s for p in parts for s in p.samples), prompt_tokens=max((p.prompt_tokens for p in parts), default=0)
        )

    def _body(self, req: GenerationRequest, n: int, seed: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.options.model,
            "prompt": req.prompt,
            "n": n,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
        }
        if seed is not None:
            body["seed"] = seed
        if self.options.stop_mode == "server":
            if req.stop:
                body["stop"] = list(req.stop)
                body["include_stop_str_in_output"] = True
        else:
            body["stream"] = True
        body.update(self.options.extra_body)
        return body

    async def _call(
        self, client: Any, limit: asyncio.Semaphore, req: GenerationRequest, n: int, seed: int | None
    ) -> GenerationResult:
        body = self._body(req, n, seed)
        attempts = self.options.max_retries + 1
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(attempts),
            # backoff_s, 2 backoff_s, 4 backoff_s, ... each plus up to half a backoff_s at random
            wait=wait_exponential(multiplier=self.options.backoff_s, exp_base=2)
            + wait_random(0, self.options.backoff_s / 2),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with limit:
                        if self.options.stop_mode == "client":
                            return await self._stream(client, body, req.stop)
                        return self._parse(await self._post(client, body), req.stop, n)
        except _Retryable as exc:
            tries = retrying.statistics.get("attempt_number", attempts)
            raise RstarError(f"{self._url}: {exc} (gave up after {tries} attempts)") from None
        raise AssertionError("unreachable")

    def _log_retry(self, state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action else 0.0
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s: %s; retrying in %.1f s", self._url, exc, wait)

    # --- HTTP --------------------------------------------------------------------------------

    async def _post(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        httpx = self._httpx
        try:
            response = await client.post(self._url, json=body)
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        _raise_for_status(response.status_code, response.text)
        data: dict[str, Any] = response.json()
        return data

    async def _stream(self, client: Any, body: dict[str, Any], stops: Sequence[str]) -> GenerationResult:
        httpx = self._httpx
        text, chunks, finish, stop = "", 0, "length", None
        try:
            async with client.stream("POST", self._url, json=body) as response:
                if response.status_code >= 400:
                    _raise_for_status(response.status_code, (await response.aread()).decode(errors="replace"))
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    choice = json.loads(payload)["choices"][0]
                    seen = len(text)
                    text += choice.get("text") or ""
                    chunks += 1
                    hit = find_stop(text, stops, seen)
                    if hit is not None:
                        end, stop = hit
                        text, finish = text[:end], "stop"
                        break  # leaving the block closes the stream; the server stops generating
                    if choice.get("finish_reason"):
                        finish = "eos" if choice["finish_reason"] == "stop" else "length"
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        return GenerationResult((Sample(text, finish, stop, chunks),), prompt_tokens=0)

    def _parse(self, data: dict[str, Any], stops: Sequence[str], n: int) -> GenerationResult:
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise RstarError(
                f"{self._url} returned {len(choices)} choices for n={n}; set native_n: false for this server"
            )
        usage = data.get("usage") or {}
        completion = int(usage.get("completion_tokens", 0))
        samples = []
        for choice in choices:
            text = choice.get("text") or ""
            reason = choice.get("finish_reason")
            stop_reason = choice.get("stop_reason")
            stop = stop_reason if isinstance(stop_reason, str) and stop_reason in stops else None
            if stop is None:
                stop = next((s for s in stops if s and text.endswith(s)), None)
            if stop is not None and not text.endswith(stop):
                text += stop  # a server that stopped on it but dropped it from the text
            finish = "stop" if stop is not None else ("length" if reason == "length" else "eos")
            samples.append(Sample(text, finish, stop, completion // max(n, 1)))
        return GenerationResult(tuple(samples), prompt_tokens=int(usage.get("prompt_tokens", 0)))


class _Retryable(Exception):
    """A failure worth another try."""


def _raise_for_status(status: int, text: str) -> None:
    if status == 429 or status >= 500:
        raise _Retryable(f"HTTP {status}: {text[:200]}")
    if status >= 400:
        raise RstarError(f"the completions server answered HTTP {status}: {text[:500]}")
