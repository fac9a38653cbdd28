"""Load test: many documents, hundreds of completion requests each.

The real server runs over stdio against the loopback upstream, which answers
with a random mix of fast, slow, failing and rate-limited responses. Each
document types one character per request; requests overlap (later ones
supersede earlier ones) and a share is cancelled with ``$/cancelRequest``.
At the end every request must have been answered (a result or the
RequestCancelled error), the server must hold no leftover asyncio tasks or
streaming upstream connections, and its memory growth is reported.

    python -m bench.load                      # full run, prints a table
    python -m bench.load --write RELIABILITY.md   # also stores the figures

tests/e2e/test_load.py runs a smaller version of the same function.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from lsprotocol import types
from pygls.exceptions import JsonRpcException

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fake_upstream import FakeUpstream, Recorded, Reply
from tests.harness import open_doc, openai_env, start_client, stop_client

REQUEST_CANCELLED = -32800
MARK_START = "<!-- load:start -->"
MARK_END = "<!-- load:end -->"


class MixedUpstream:
    """Thread-safe random choice of reply per upstream request."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.kinds: Counter[str] = Counter()

    def __call__(self, rec: Recorded) -> Reply:
        with self._lock:
            roll = self._rng.random()
            delay = self._rng.uniform(0.05, 0.4)
        if roll < 0.55:
            kind, reply = "good", Reply(text="result = compute(value)")
        elif roll < 0.80:
            kind, reply = "slow", Reply(text="total += item.size\n", first_token_delay=delay,
                                        token_delay=0.01)
        elif roll < 0.92:
            kind, reply = "error500", Reply(status=500)
        elif roll < 0.96:
            kind, reply = "cut", Reply(text="alpha beta gamma", cut_after=1)
        else:
            kind, reply = "rate429", Reply(status=429, headers={"Retry-After": "0.2"})
        with self._lock:
            self.kinds[kind] += 1
        return reply


@dataclass
class LoadResult:
    documents: int
    requests: int
    answered: int = 0
    with_items: int = 0
    cancelled: int = 0
    other_errors: list[str] = field(default_factory=list)
    unanswered: int = 0
    seconds: float = 0.0
    upstream_requests: int = 0
    upstream_kinds: dict[str, int] = field(default_factory=dict)
    upstream_in_flight_at_end: int = 0
    upstream_connections_at_end: int = 0
    tasks_before: int = 0
    tasks_after: int = 0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_after_mb - self.rss_before_mb

    def rows(self) -> list[tuple[str, str]]:
        s = self.stats
        lat = s.get("latencyMs", {})
        return [
            ("documents x requests", f"{self.documents} x {self.requests // self.documents}"),
            ("requests sent", str(self.requests)),
            ("answered with a result", f"{self.answered} ({self.with_items} with a suggestion)"),
            ("answered RequestCancelled", str(self.cancelled)),
            ("other errors / unanswered", f"{len(self.other_errors)} / {self.unanswered}"),
            ("wall time", f"{self.seconds:.1f} s"),
            ("upstream requests (mix)", f"{self.upstream_requests} "
             + str(dict(sorted(self.upstream_kinds.items())))),
            ("superseded / coalesced / cache hits",
             f"{s.get('superseded')} / {s.get('coalesced')} / {s.get('cacheHits')}"),
            ("paused by backoff or breaker", str(s.get("skippedBackoff"))),
            ("answer latency p50 / p95 (ms)", f"{lat.get('p50')} / {lat.get('p95')}"),
            ("asyncio tasks before / after", f"{self.tasks_before} / {self.tasks_after}"),
            ("upstream requests in flight at end", str(self.upstream_in_flight_at_end)),
            ("server connections to upstream at end", str(self.upstream_connections_at_end)),
            ("server RSS before / after (MB)",
             f"{self.rss_before_mb:.1f} / {self.rss_after_mb:.1f} (+{self.rss_growth_mb:.1f})"),
            ("server exit code after shutdown", str(self.exit_code)),
        ]


async def _stats(client: Any) -> dict[str, Any]:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="qwen.stats"))


def _connections(pid: int, port: int) -> int:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return -1
    return sum(1 for c in conns if c.raddr and c.raddr.port == port
               and c.status == psutil.CONN_ESTABLISHED)


async def _drive_document(client: Any, uri: str, count: int, rng: random.Random,
                          futures: list[Any]) -> None:
    text = "def work(value):\n    "
    version = 1
    open_doc(client, uri, text, version=version)
    for i in range(count):
        ch = rng.choice("abcdefgh_ .(")
        line, col = 1, len(text.split("\n")[1])
        version += 1
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(line, col),
                                  end=types.Position(line, col)), text=ch)]))
        text += ch
        msg_id = f"{uri}#{i}"
        kind = types.InlineCompletionTriggerKind.Automatic if rng.random() < 0.8 else (
            types.InlineCompletionTriggerKind.Invoked)
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line, col + 1),
            context=types.InlineCompletionContext(trigger_kind=kind))
        # pytest-lsp's send_request_async is a coroutine: schedule it now and
        # yield once so the request is on the wire before anything else.
        fut = asyncio.ensure_future(client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id))
        futures.append(fut)
        await asyncio.sleep(0)
        if rng.random() < 0.25:
            # The editor gives up on it: right away, or a moment later.
            if rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0, 0.01))
            client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))
        # Typing rhythm: mostly fast, sometimes a pause long enough to finish.
        await asyncio.sleep(rng.choice([0.005, 0.01, 0.02, 0.03, 0.15]))


async def run_load(documents: int, per_document: int, *, seed: int = 7,
                   answer_timeout: float = 60.0) -> LoadResult:
    result = LoadResult(documents=documents, requests=documents * per_document)
    mix = MixedUpstream(seed)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream(mix) as fake:
        env = openai_env(Path(tmp), fake.openai_base, QWEN_LSP_TIMEOUT_MS="3000")
        env["QWEN_LSP_DEBOUNCE_MS"] = "10"
        client = await start_client(env)
        pid = client._server.pid  # type: ignore[attr-defined]
        try:
            result.tasks_before = (await _stats(client))["asyncioTasks"]
            result.rss_before_mb = psutil.Process(pid).memory_info().rss / 2**20
            futures: list[Any] = []
            t0 = time.perf_counter()
            await asyncio.gather(*[
                _drive_document(client, f"file:///load/doc{d}.py", per_document,
                                random.Random(rng.random()), futures)
                for d in range(documents)])
            done, pending = await asyncio.wait(
                futures, timeout=answer_timeout)
            result.seconds = time.perf_counter() - t0
            result.unanswered = len(pending)
            for fut in done:
                exc = fut.exception()
                if exc is None:
                    result.answered += 1
                    value = fut.result()
                    items = getattr(value, "items", None) if value is not None else None
                    if items:
                        result.with_items += 1
                elif isinstance(exc, JsonRpcException) and exc.code == REQUEST_CANCELLED:
                    result.cancelled += 1
                else:
                    result.other_errors.append(f"{type(exc).__name__}: {exc}")
            # Let flights that nobody waits for any more wind down.
            await asyncio.to_thread(fake.wait_until_finished, 10.0)
            await asyncio.sleep(0.3)
            result.stats = await _stats(client)
            result.tasks_after = result.stats["asyncioTasks"]
            result.rss_after_mb = psutil.Process(pid).memory_info().rss / 2**20
            result.upstream_requests = len(fake.requests)
            result.upstream_kinds = dict(mix.kinds)
            result.upstream_in_flight_at_end = sum(1 for r in fake.requests
                                                   if r.finished is None)
            result.upstream_connections_at_end = _connections(pid, fake.port)
        finally:
            await stop_client(client)
        server = client._server  # type: ignore[attr-defined]
        result.exit_code = server.returncode if server is not None else None
    return result


def table(result: LoadResult) -> str:
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result.rows()]
    return "\n".join(lines)


def write_figures(path: Path, result: LoadResult, command: str) -> None:
    block = (f"{MARK_START}\nMeasured with `{command}` on "
             f"{time.strftime('%Y-%m-%d')} ({psutil.cpu_count()} CPUs):\n\n"
             f"{table(result)}\n{MARK_END}")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text + "\n" + block
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--requests", type=int, default=300, help="requests per document")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--write", type=Path, default=None,
                        help="store the table between the load markers of this file")
    args = parser.parse_args(argv)
    result = asyncio.run(run_load(args.documents, args.requests, seed=args.seed))
    print(table(result))
    if result.other_errors:
        print("errors:", *sorted(set(result.other_errors))[:10], sep="\n  ")
    if args.write is not None:
        command = (f"python -m bench.load --documents {args.documents} "
                   f"--requests {args.requests} --seed {args.seed}")
        write_figures(args.write, result, command)
    ok = not result.other_errors and not result.unanswered and result.exit_code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
