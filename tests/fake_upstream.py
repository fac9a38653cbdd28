"""A real loopback HTTP server that speaks the Qwen-Coder wire formats.

It stands in for the cloud API in unit, end-to-end, editor and benchmark runs.
It listens on 127.0.0.1 (an ephemeral port by default), serves each
connection on its own daemon thread and answers:

* ``POST .../completions`` - OpenAI-compatible text completions (FIM),
* ``POST .../chat/completions`` - OpenAI-compatible chat (partial mode),
* ``POST .../services/aigc/text-generation/generation`` - DashScope native.

Streaming is chosen like the real service: ``"stream": true`` in the body
for the OpenAI-compatible endpoints, the ``X-DashScope-SSE: enable`` header
for the native one; otherwise a single JSON body is returned. The usage chunk
of an OpenAI-compatible stream is sent only when the request asks for it with
``stream_options.include_usage``. Stop sequences and ``max_tokens`` are
honoured (finish_reason ``"stop"`` / ``"length"``).

Token counts come from a deterministic approximate tokenizer (runs of word
characters, single punctuation marks, runs of whitespace). For chat requests
the prompt is the sequence of the message contents, tokenized one content
block at a time (a content given as a list of ``{"type": "text", "text": ...}``
blocks counts as its texts).

Both context-cache modes of DashScope's Chat Completions and native APIs are
imitated (one mode per request):

* implicit, for requests without markers: ``cached_tokens`` is the token
  length of the longest common prefix between this prompt and any earlier
  unmarked prompt for the same model, reported only when that prefix is at
  least 256 tokens (otherwise 0);
* explicit, for requests whose content blocks carry
  ``"cache_control": {"type": "ephemeral"}`` (at most 4, else HTTP 400): each
  marker looks back up to 20 content blocks for the longest live cached
  prefix (a hit, billed at 10%; it resets that cache's 5-minute life); a
  marker whose own prefix is not cached creates a cache from the first block
  to the marker when that prefix has at least 1,024 tokens. The cache exists
  only once the response has ended. The usage then reads
  ``prompt_tokens_details: {"cached_tokens": hit, "cache_type": "ephemeral",
  "cache_creation_input_tokens": new, "cache_creation":
  {"ephemeral_5m_input_tokens": new}}``, the fields of the vendor's SDK usage
  class (``GenerationUsage.PromptTokensDetails``); ``new`` counts the tokens
  beyond the hit.

Every request's bill (token counts by billing class) is kept in
``Recorded.bill``, also for streams the client closed early.

Manual use: ``python -m tests.fake_upstream --port 8765 --text "return 1"``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

TOKEN_RE = re.compile(r"\w+|[^\w\s]|\s+")
CACHE_MIN_TOKENS = 256
EXPLICIT_MIN_TOKENS = 1024
EXPLICIT_TTL_S = 300.0
EXPLICIT_LOOKBACK_BLOCKS = 20
MAX_CACHE_MARKERS = 4
ENDLESS_LIMIT_S = 60.0
_PROMPT_HISTORY = 512  # earlier prompts remembered per model for the cache
_POLL_S = 0.01

_COMPAT_PREFIX = "/compatible-mode/v1"
_NATIVE_PREFIX = "/api/v1"
_NATIVE_PATH = "/services/aigc/text-generation/generation"


def fim_parts(prompt: str) -> tuple[str, str]:
    """(code before the cursor, code after it) as a FIM prompt lays them out.

    The code before the cursor is the prefix plus what follows
    ``<|fim_middle|>`` (the server puts the cursor's block of lines there);
    anything before ``<|fim_prefix|>`` (repository-level context) is left out.
    """
    _head, _, rest = prompt.partition("<|fim_prefix|>")
    prefix, _, rest = rest.partition("<|fim_suffix|>")
    suffix, _, middle = rest.rpartition("<|fim_middle|>")
    return prefix + middle, suffix


def tokenize(text: str) -> list[str]:
    """Approximate tokens; joining them gives back ``text`` exactly."""
    return TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return len(tokenize(text))


def common_prefix_len(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def implicit_hit(earlier: list[list[str]], tokens: list[str]) -> int:
    """The implicit cache: the longest token prefix ``tokens`` shares with an
    earlier prompt, when at least CACHE_MIN_TOKENS long; ``tokens`` joins
    ``earlier``."""
    best = max((common_prefix_len(tokens, p) for p in earlier), default=0)
    earlier.append(tokens)
    del earlier[:-_PROMPT_HISTORY]
    return best if best >= CACHE_MIN_TOKENS else 0


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Recorded:
    """One request as the server saw it (times are ``time.monotonic()``)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    started: float
    finished: float | None = None
    aborted: bool = False  # client closed before the full response was written
    status: int = 0  # status code the server answered with
    client_port: int = 0  # the client's TCP port: equal ports mean a reused connection
    # Billed token counts: prompt, completion, implicit, explicit, creation.
    bill: dict[str, int] = field(default_factory=dict)
    # Explicit caches this request creates once its response has ended.
    pending_caches: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Reply:
    """How to answer a request. All fields are optional."""

    text: str = ""
    status: int = 200
    chunks: list[str] | None = None  # explicit stream pieces (default: ~tokens of text)
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    # Overrides of the computed counts: keys prompt_tokens, completion_tokens, cached_tokens.
    usage: dict[str, int] | None = None
    error: dict[str, Any] | None = None  # error body sent verbatim for status != 200
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # body sent verbatim (malformed cases)
    cut_after: int | None = None  # drop the connection after N text chunks
    content_type: str | None = None
    endless: bool = False  # stream until the client goes away (at most 60 s)
    linger: float = 0.0  # seconds between the final event and the end of the body


ReplySource = Reply | Callable[[Recorded], Reply] | None


class _ClientGone(Exception):
    """The client closed the connection while we were still answering."""


_DEFAULT_ERRORS: dict[int, tuple[str, str, str, str, str]] = {
    # status: (native code, native message, compat code, compat type, compat message)
    400: ("InvalidParameter", "The request is invalid.",
          "invalid_parameter_error", "invalid_request_error", "The request is invalid."),
    401: ("InvalidApiKey", "Invalid API-key provided.",
          "invalid_api_key", "invalid_request_error", "Incorrect API key provided."),
    403: ("AccessDenied", "Access denied.",
          "access_denied", "invalid_request_error", "Access denied."),
    404: ("ModelNotFound", "Model not exist.",
          "model_not_found", "invalid_request_error",
          "The model does not exist or you do not have access to it."),
    429: ("Throttling.RateQuota", "Requests rate limit exceeded, please try again later.",
          "limit_requests", "limit_requests",
          "Requests rate limit exceeded, please try again later."),
    500: ("InternalError", "An internal error has occured, please try again later.",
          "internal_error", "internal_error",
          "An internal error has occured, please try again later."),
}


def error_body(status: int, native: bool, message: str | None = None) -> dict[str, Any]:
    """The documented error body shape for ``status``."""
    ncode, nmsg, ccode, ctype, cmsg = _DEFAULT_ERRORS.get(status, _DEFAULT_ERRORS[500])
    request_id = str(uuid.uuid4())
    if native:
        return {"code": ncode, "message": message or nmsg, "request_id": request_id}
    return {
        "error": {"message": message or cmsg, "type": ctype, "param": None, "code": ccode},
        "request_id": request_id,
    }


@dataclass
class _Plan:
    """What one successful answer contains."""

    api: str  # "completions" | "chat" | "native"
    model: str
    pieces: list[str]
    finish: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    include_usage: bool
    incremental: bool
    explicit: bool = False  # the request used the explicit cache
    creation_tokens: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    fake: FakeUpstream

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client dropping an idle keep-alive connection is normal, not an error.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def do_POST(self) -> None:
        self.server.fake._serve(self)

    def do_GET(self) -> None:
        self.server.fake._serve(self)


class FakeUpstream:
    def __init__(self, reply: ReplySource = None, *, api_key: str | None = None, port: int = 0) -> None:
        self.reply: ReplySource = reply
        self.api_key = api_key
        self._port = port
        self.requests: list[Recorded] = []
        self._cond = threading.Condition()
        self._history: dict[str, list[list[str]]] = {}
        # Explicit caches: (model, prefix key) -> [tokens, expires_at]
        self._explicit: dict[tuple[str, str], list[float]] = {}
        self.clock: Callable[[], float] = time.monotonic
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._live: set[socket.socket] = set()

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Self:
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._cond:
            live = list(self._live)
        for sock in live:  # end streams still in flight
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "FakeUpstream is not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base(self) -> str:
        return self.url + _COMPAT_PREFIX

    @property
    def native_base(self) -> str:
        return self.url + _NATIVE_PREFIX

    # -- test helpers ---------------------------------------------------------

    def set_text(self, text: str) -> None:
        self.reply = Reply(text=text)

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()

    def reset_cache(self) -> None:
        with self._cond:
            self._history.clear()
            self._explicit.clear()

    def explicit_caches(self) -> int:
        """Live explicit caches."""
        now = self.clock()
        with self._cond:
            return sum(1 for _, expires in self._explicit.values() if expires > now)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.requests) >= n, timeout)

    def wait_until_finished(self, timeout: float = 5.0) -> bool:
        """Wait until every recorded request has been fully answered or aborted."""
        with self._cond:
            return self._cond.wait_for(
                lambda: all(r.finished is not None for r in self.requests), timeout
            )

    # -- request handling -----------------------------------------------------

    def _serve(self, h: _Handler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        rec = Recorded(
            method=h.command,
            path=h.path,
            headers={k.lower(): v for k, v in h.headers.items()},
            body=body,
            json=parsed,
            started=time.monotonic(),
            client_port=int(h.client_address[1]),
        )
        with self._cond:
            self.requests.append(rec)
            self._live.add(h.connection)
            self._cond.notify_all()
        try:
            self._respond(h, rec)
        except (_ClientGone, BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            rec.aborted = True
            h.close_connection = True
        finally:
            with self._cond:
                rec.finished = time.monotonic()
                # Explicit caches are created after the response.
                now = self.clock()
                for key, tokens in rec.pending_caches:
                    self._explicit[(_model_of(rec), key)] = [tokens, now + EXPLICIT_TTL_S]
                self._live.discard(h.connection)
                self._cond.notify_all()

    def _resolve_reply(self, rec: Recorded) -> Reply:
        source = self.reply
        if source is None:
            return Reply()
        return source(rec) if callable(source) else source

    def _respond(self, h: _Handler, rec: Recorded) -> None:
        api = _route(rec.path)
        native = api == "native"
        if api is None or rec.method != "POST":
            self._send_json(h, rec, 404, error_body(404, native, f"No route for {rec.path}"))
            return
        if self.api_key is not None and rec.headers.get("authorization") != f"Bearer {self.api_key}":
            self._send_json(h, rec, 401, error_body(401, native))
            return
        reply = self._resolve_reply(rec)
        if reply.status == 200 and api != "completions" and _marker_count(api, rec) > MAX_CACHE_MARKERS:
            message = f"At most {MAX_CACHE_MARKERS} cache_control markers are allowed per request."
            self._send_json(h, rec, 400, error_body(400, native, message))
            return
        if reply.status != 200:
            _pause(h, reply.first_token_delay)
            self._send_json(h, rec, reply.status, reply.error or error_body(reply.status, native),
                            reply.headers)
            return
        streaming = _wants_stream(api, rec)
        if reply.raw is not None:
            _pause(h, reply.first_token_delay)
            default = "text/event-stream" if streaming else "application/json"
            self._send_bytes(h, rec, 200, reply.raw, reply.content_type or default, reply.headers)
            return
        plan = self._plan(api, rec, reply)
        if streaming:
            self._stream(h, rec, plan, reply)
        else:
            _pause(h, reply.first_token_delay)
            self._send_json(h, rec, 200, _full_body(plan), reply.headers, reply.content_type)

    # -- planning -------------------------------------------------------------

    def _plan(self, api: str, rec: Recorded, reply: Reply) -> _Plan:
        body = rec.json if isinstance(rec.json, dict) else {}
        params = body.get("parameters") if api == "native" else body
        params = params if isinstance(params, dict) else {}
        model = str(body.get("model") or "")
        prompt = _prompt_of(api, body)
        pieces = list(reply.chunks) if reply.chunks is not None else tokenize(reply.text)
        finish = "stop"
        if not reply.endless:
            pieces, finish = _apply_limits(pieces, params.get("stop"), params.get("max_tokens"))
        blocks = _blocks_of(api, body)
        # Chat content is tokenized block by block, so a cached prefix of
        # blocks is always a prefix of the prompt's tokens.
        prompt_tokens = (tokenize(prompt) if api == "completions"
                         else [t for _, text, _ in blocks for t in tokenize(text)])
        explicit = any(marked for _, _, marked in blocks)
        creation = 0
        if explicit:
            cached, creation = self._explicit_cache(model, rec, blocks)
            cached = min(cached, len(prompt_tokens))
            creation = min(creation, len(prompt_tokens) - cached)
        else:
            cached = self._cached_tokens(model, prompt_tokens)
        overrides = reply.usage or {}
        options = body.get("stream_options")
        plan = _Plan(
            api=api,
            model=model,
            pieces=pieces,
            finish=finish,
            prompt_tokens=overrides.get("prompt_tokens", len(prompt_tokens)),
            completion_tokens=overrides.get("completion_tokens", count_tokens("".join(pieces))),
            cached_tokens=overrides.get("cached_tokens", cached),
            include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
            incremental=bool(params.get("incremental_output", False)),
            explicit=explicit,
            creation_tokens=overrides.get("cache_creation_tokens", creation),
        )
        rec.bill = {
            "prompt": plan.prompt_tokens,
            "completion": plan.completion_tokens,
            "implicit": 0 if explicit else plan.cached_tokens,
            "explicit": plan.cached_tokens if explicit else 0,
            "creation": plan.creation_tokens,
        }
        return plan

    def _explicit_cache(
        self, model: str, rec: Recorded, blocks: list[tuple[str, str, bool]]
    ) -> tuple[int, int]:
        """(hit tokens, creation tokens) of a request with cache markers."""
        keys: list[str] = []
        totals: list[int] = []
        digest = hashlib.sha256()
        total = 0
        for role, text, _ in blocks:
            digest.update(_compact([role, text]))
            keys.append(digest.hexdigest())
            total += count_tokens(text)
            totals.append(total)
        now = self.clock()
        hit = 0
        hit_key: str | None = None
        created = 0
        with self._cond:
            for key, entry in list(self._explicit.items()):
                if entry[1] <= now:
                    del self._explicit[key]
            for m, (_, _, marked) in enumerate(blocks):
                if not marked:
                    continue
                for j in range(m, max(-1, m - EXPLICIT_LOOKBACK_BLOCKS), -1):
                    if (model, keys[j]) in self._explicit:
                        if totals[j] > hit:
                            hit, hit_key = totals[j], keys[j]
                        break
                if (model, keys[m]) not in self._explicit and totals[m] >= EXPLICIT_MIN_TOKENS:
                    rec.pending_caches.append((keys[m], totals[m]))
                    created = max(created, totals[m])
            if hit_key is not None:
                self._explicit[(model, hit_key)][1] = now + EXPLICIT_TTL_S
        return hit, max(0, created - hit)

    def _cached_tokens(self, model: str, tokens: list[str]) -> int:
        """Simulated implicit cache hit, then remember this prompt."""
        with self._cond:
            return implicit_hit(self._history.setdefault(model, []), tokens)

    # -- writing --------------------------------------------------------------

    def _send_bytes(
        self,
        h: _Handler,
        rec: Recorded,
        status: int,
        data: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        rec.status = status
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    def _send_json(
        self,
        h: _Handler,
        rec: Recorded,
        status: int,
        obj: Any,
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        ctype = content_type or "application/json"
        self._send_bytes(h, rec, status, _compact(obj), ctype, headers)

    def _stream(self, h: _Handler, rec: Recorded, plan: _Plan, reply: Reply) -> None:
        rec.status = 200
        h.send_response(200)
        h.send_header("Content-Type", reply.content_type or "text/event-stream;charset=UTF-8")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        for key, value in reply.headers.items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.flush()
        _pause(h, reply.first_token_delay)
        frames = _Frames(plan)
        if plan.api == "chat":
            _write_chunk(h, frames.role())
        for sent, piece in enumerate(_pieces(plan, reply)):
            if reply.cut_after is not None and sent >= reply.cut_after:
                h.close_connection = True  # no terminating chunk: the body is cut
                return
            if sent:
                _pause(h, reply.token_delay)
            _write_chunk(h, frames.text(piece))
        for frame in frames.finish():
            _write_chunk(h, frame)
        _pause(h, reply.linger)
        _write_chunk(h, b"")  # end of the chunked body


class _Frames:
    """Byte-exact SSE events of one response, in the documented layouts."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.created = int(time.time())
        prefix = "chatcmpl-" if plan.api == "chat" else "cmpl-"
        self.id = prefix + str(uuid.uuid4()) if plan.api != "native" else str(uuid.uuid4())
        self.frame_no = 0
        self.emitted: list[str] = []

    def _compat(self, choices: list[Any], usage: Any) -> bytes:
        obj = {
            "choices": choices,
            "object": "chat.completion.chunk" if self.plan.api == "chat" else "text_completion",
            "usage": usage,
            "created": self.created,
            "system_fingerprint": None,
            "model": self.plan.model,
            "id": self.id,
        }
        return b"data: " + _compact(obj) + b"\n\n"

    def _native(self, content: str, finish: str) -> bytes:
        self.frame_no += 1
        obj = {
            "output": {"choices": [{"message": {"content": content, "role": "assistant"},
                                    "finish_reason": finish}]},
            "usage": _native_usage(self.plan, count_tokens("".join(self.emitted))),
            "request_id": self.id,
        }
        head = f"id:{self.frame_no}\nevent:result\n:HTTP_STATUS/200\ndata:".encode()
        return head + _compact(obj) + b"\n\n"

    def role(self) -> bytes:
        choice = {"delta": {"content": "", "role": "assistant"}, "index": 0, "logprobs": None,
                  "finish_reason": None}
        return self._compat([choice], None)

    def text(self, piece: str) -> bytes:
        self.emitted.append(piece)
        if self.plan.api == "native":
            content = piece if self.plan.incremental else "".join(self.emitted)
            return self._native(content, "null")
        if self.plan.api == "chat":
            choice: dict[str, Any] = {"delta": {"content": piece}, "finish_reason": None, "index": 0,
                                      "logprobs": None}
        else:
            choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": None}
        return self._compat([choice], None)

    def finish(self) -> list[bytes]:
        plan = self.plan
        if plan.api == "native":
            content = "" if plan.incremental else "".join(self.emitted)
            return [self._native(content, plan.finish)]
        if plan.api == "chat":
            last: dict[str, Any] = {"finish_reason": plan.finish, "delta": {"content": ""},
                                    "index": 0, "logprobs": None}
        else:
            last = {"text": "", "index": 0, "logprobs": None, "finish_reason": plan.finish}
        frames = [self._compat([last], None)]
        if plan.include_usage:
            frames.append(self._compat([], _compat_usage(plan)))
        frames.append(b"data: [DONE]\n\n")
        return frames


def _prompt_details(plan: _Plan) -> dict[str, Any]:
    if not plan.explicit:
        return {"cached_tokens": plan.cached_tokens}
    return {
        "cached_tokens": plan.cached_tokens,
        "cache_type": "ephemeral",
        "cache_creation_input_tokens": plan.creation_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": plan.creation_tokens},
    }


def _compat_usage(plan: _Plan) -> dict[str, Any]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
        "prompt_tokens_details": _prompt_details(plan),
    }


def _native_usage(plan: _Plan, output_tokens: int) -> dict[str, Any]:
    return {
        "total_tokens": plan.prompt_tokens + output_tokens,
        "output_tokens": output_tokens,
        "input_tokens": plan.prompt_tokens,
        "prompt_tokens_details": _prompt_details(plan),
    }


def _full_body(plan: _Plan) -> dict[str, Any]:
    """The non-streamed JSON answer."""
    text = "".join(plan.pieces)
    if plan.api == "native":
        return {
            "output": {"choices": [{"message": {"content": text, "role": "assistant"},
                                    "finish_reason": plan.finish}]},
            "usage": _native_usage(plan, plan.completion_tokens),
            "request_id": str(uuid.uuid4()),
        }
    if plan.api == "chat":
        choice: dict[str, Any] = {"message": {"content": text, "role": "assistant"},
                                  "finish_reason": plan.finish, "index": 0, "logprobs": None}
        obj, prefix = "chat.completion", "chatcmpl-"
    else:
        choice = {"text": text, "finish_reason": plan.finish, "index": 0, "logprobs": None}
        obj, prefix = "text_completion", "cmpl-"
    return {
        "choices": [choice],
        "object": obj,
        "usage": _compat_usage(plan),
        "created": int(time.time()),
        "system_fingerprint": None,
        "model": plan.model,
        "id": prefix + str(uuid.uuid4()),
    }


def _route(path: str) -> str | None:
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith(_NATIVE_PATH):
        return "native"
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/completions"):
        return "completions"
    return None


def _wants_stream(api: str, rec: Recorded) -> bool:
    if api == "native":
        return rec.headers.get("x-dashscope-sse", "").lower() == "enable"
    return isinstance(rec.json, dict) and rec.json.get("stream") is True


def _messages_of(api: str, body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if api == "native":
        inp = body.get("input")
        messages = inp.get("messages") if isinstance(inp, dict) else None
    return messages if isinstance(messages, list) else []


def _is_marked(block: dict[str, Any]) -> bool:
    control = block.get("cache_control")
    return isinstance(control, dict) and control.get("type") == "ephemeral"


def _blocks_of(api: str, body: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(role, text, marked) of every content block; a string content is one block."""
    if api == "completions":
        return []
    blocks: list[tuple[str, str, bool]] = []
    for message in _messages_of(api, body):
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or "")
        content = message.get("content")
        if isinstance(content, str):
            blocks.append((role, content, False))
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and isinstance(block.get("text"), str):
                    blocks.append((role, block["text"], _is_marked(block)))
                else:
                    blocks.append((role, json.dumps(block), False))
        elif content is not None:
            blocks.append((role, json.dumps(content), False))
    return blocks


def _marker_count(api: str, rec: Recorded) -> int:
    body = rec.json if isinstance(rec.json, dict) else {}
    return sum(1 for _, _, marked in _blocks_of(api, body) if marked)


def _model_of(rec: Recorded) -> str:
    body = rec.json if isinstance(rec.json, dict) else {}
    return str(body.get("model") or "")


def _prompt_of(api: str, body: dict[str, Any]) -> str:
    if api == "completions":
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else ""
    return "".join(text for _, text, _ in _blocks_of(api, body))


def _apply_limits(pieces: list[str], stop: Any, max_tokens: Any) -> tuple[list[str], str]:
    """Cut the answer at the first stop sequence, then at ``max_tokens``."""
    text = "".join(pieces)
    finish = "stop"
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    hits = [text.find(s) for s in stops if isinstance(s, str) and s and s in text]
    if hits:
        text = text[: min(hits)]
    if isinstance(max_tokens, int) and max_tokens >= 0 and count_tokens(text) > max_tokens:
        text = "".join(tokenize(text)[:max_tokens])
        finish = "length"
    kept: list[str] = []
    used = 0
    for piece in pieces:
        if used >= len(text):
            break
        piece = piece[: len(text) - used]
        kept.append(piece)
        used += len(piece)
    return kept, finish


def _pieces(plan: _Plan, reply: Reply) -> Any:
    """The text pieces to stream; endless replies cycle until 60 s pass."""
    if not reply.endless:
        yield from plan.pieces
        return
    cycle = plan.pieces or ["x"]
    deadline = time.monotonic() + ENDLESS_LIMIT_S
    while time.monotonic() < deadline:
        yield from cycle


def _peer_closed(h: _Handler) -> bool:
    """True once the client has closed its side (EOF or reset)."""
    sock = h.connection
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _pause(h: _Handler, seconds: float) -> None:
    """Sleep, but notice (and raise on) a client disconnect meanwhile."""
    deadline = time.monotonic() + seconds
    while True:
        if _peer_closed(h):
            raise _ClientGone
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(_POLL_S, left))


def _write_chunk(h: _Handler, data: bytes) -> None:
    """One HTTP/1.1 chunk (an empty ``data`` ends the body)."""
    if _peer_closed(h):
        raise _ClientGone
    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    h.wfile.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Loopback fake of the Qwen-Coder API.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--text", default="pass")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    reply = Reply(text=args.text, first_token_delay=args.first_token_delay,
                  token_delay=args.token_delay)
    fake = FakeUpstream(reply, api_key=args.api_key, port=args.port).start()
    print(f"openai base: {fake.openai_base}\nnative base: {fake.native_base}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
