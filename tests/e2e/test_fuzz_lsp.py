"""Random LSP message streams against the real server process.

One server (over stdio, with a loopback upstream) takes every generated
stream: known methods with random params, unknown methods, odd ids, junk
JSON, and plausible document traffic with random positions. After each
stream the server must still be alive, answer a valid request, and have
answered every well-formed request it was sent (result or JSON-RPC error).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import ROOT, openai_env

URIS = ["file:///work/fuzz/a.py", "file:///work/fuzz/b.py", "untitled:Untitled-1",
        "file:///work/fuzz/.env", "weird uri with spaces", ""]
METHODS = ["textDocument/completion", "textDocument/inlineCompletion",
           "textDocument/didOpen", "textDocument/didChange", "textDocument/didClose",
           "textDocument/didSave", "workspace/executeCommand",
           "workspace/didChangeConfiguration", "$/cancelRequest", "$/setTrace",
           "completionItem/resolve", "textDocument/hover", "qwen/unknown", "", "initialized"]


class RawServer:
    """The server process with a framed JSON-RPC pipe; responses are sorted by id."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qwen_lsp"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=str(ROOT))
        self.responses: dict[Any, dict[str, Any]] = {}
        self._arrived: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def write(self, body: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()

    def send(self, message: Any) -> None:
        self.write(json.dumps(message).encode())

    def request(self, method: str, params: Any, timeout: float = 10.0) -> dict[str, Any]:
        msg_id = f"ok-{uuid.uuid4()}"
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return self.wait_for(msg_id, timeout)

    def wait_for(self, msg_id: Any, timeout: float = 10.0) -> dict[str, Any]:
        key = json.dumps(msg_id)
        while True:
            with self._lock:
                if key in self.responses:
                    return self.responses[key]
            try:
                self._arrived.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no answer to request {msg_id!r}") from None

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            length = 0
            while True:
                line = out.readline()
                if not line:
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line in (b"\r\n", b"\n"):
                    break
            msg = json.loads(out.read(length))
            if "method" in msg and "id" in msg:
                # A request from the server (configuration, progress): answer it.
                self.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
            elif "id" in msg:
                with self._lock:
                    self.responses[json.dumps(msg["id"])] = msg
                self._arrived.put(msg["id"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**31 + 5) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["uri", "line", "character", "text", "textDocument",
                                       "position", "range", "start", "end", "context",
                                       "contentChanges", "version", "id", "command",
                                       "triggerKind", "languageId", "settings", "x"]),
                      children, max_size=5),
    max_leaves=12,
)

positions = st.fixed_dictionaries({"line": st.integers(-2, 50), "character": st.integers(-2, 300)})
texts = st.text(alphabet=st.sampled_from(list("ab =(\n\r\t") + ["😀", "é", "\x00", "\u2028"]),
                max_size=60)

plausible = st.one_of(
    st.builds(lambda uri, text, v: ("textDocument/didOpen", {"textDocument": {
        "uri": uri, "languageId": "python", "version": v, "text": text}}),
        st.sampled_from(URIS), texts, st.integers(0, 10)),
    st.builds(lambda uri, a, b, text, v: ("textDocument/didChange", {
        "textDocument": {"uri": uri, "version": v},
        "contentChanges": [{"range": {"start": a, "end": b}, "text": text}]}),
        st.sampled_from(URIS), positions, positions, texts, st.integers(0, 99)),
    st.builds(lambda uri, pos, kind: ("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": pos, "context": {"triggerKind": kind}}),
        st.sampled_from(URIS), positions, st.integers(0, 3)),
    st.builds(lambda uri, pos: ("textDocument/completion", {
        "textDocument": {"uri": uri}, "position": pos}), st.sampled_from(URIS), positions),
    st.builds(lambda uri: ("textDocument/didClose", {"textDocument": {"uri": uri}}),
              st.sampled_from(URIS)),
    st.builds(lambda cmd, args: ("workspace/executeCommand", {"command": cmd, "arguments": args}),
              st.sampled_from(["qwen.stats", "qwen.status", "qwen.clearCache", "nope"]),
              st.lists(json_values, max_size=2)),
)
random_call = st.tuples(st.sampled_from(METHODS) | st.text(max_size=12), json_values)
ids = st.integers(-5, 10**6) | st.text(min_size=1, max_size=8) | st.none() | st.floats(0, 9)

# One generated item: (kind, method, params, id)
items = st.one_of(
    st.tuples(st.just("request"), plausible | random_call, ids),
    st.tuples(st.just("notify"), plausible | random_call, st.none()),
    st.tuples(st.just("junk"), st.sampled_from([
        b"{", b"[]", b"42", b"null", b'"text"', b'{"jsonrpc": "1.0", "method": "x"}',
        b'{"id": 1}', b'{"jsonrpc": "2.0"}', b'{"jsonrpc": "2.0", "id": 7, "result": 1}',
        b'{"jsonrpc": "2.0", "method": 5, "id": 3}', b"\xff\xfe\x00",
        b'[{"jsonrpc": "2.0", "method": "qwen/x", "id": 1}]']), st.none()),
)


@pytest.fixture(scope="module")
def raw_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawServer]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with FakeUpstream(Reply(text="x = 1")) as fake:
        env = openai_env(tmp, fake.openai_base, QWEN_LSP_TIMEOUT_MS="2000")
        server = RawServer(env)
        init = server.request("initialize", {"processId": None, "rootUri": None,
                                             "capabilities": {}})
        assert "result" in init
        server.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        yield server
        bye = server.request("shutdown", None)
        assert "result" in bye
        server.send({"jsonrpc": "2.0", "method": "exit"})
        assert server.proc.wait(timeout=20) == 0
        fake.stop()


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(items, min_size=1, max_size=12))
def test_random_message_streams_never_break_the_server(raw_server: RawServer,
                                                       stream: list[Any]) -> None:
    expected: list[Any] = []
    for n, (kind, call, msg_id) in enumerate(stream):
        if kind == "junk":
            raw_server.write(call)
            continue
        method, params = call
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if kind == "request":
            # Unique per stream, so answers cannot be confused across examples.
            if isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool):
                msg_id = f"{uuid.uuid4().hex[:8]}-{n}-{msg_id}"
                expected.append(msg_id)  # notification methods with an id too
            message["id"] = msg_id
        raw_server.send(message)
    # Still alive, and answering.
    stats = raw_server.request("workspace/executeCommand", {"command": "qwen.stats"})
    assert isinstance(stats.get("result"), dict), stats
    for msg_id in expected:
        answer = raw_server.wait_for(msg_id)
        assert ("result" in answer) != ("error" in answer), answer
    assert raw_server.proc.poll() is None
