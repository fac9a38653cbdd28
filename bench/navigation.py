"""Moving around real files with the embedded local engine, as an editor user does.

A VS Code-like client (inline completions, UTF-16 positions, the `qwen/cursor`
notification that editors/vscode sends when the cursor settles) drives the real
server and the real bundled model at default settings:

1. open a file and read it for a moment;
2. jump to a place inside a function (cursor notification), look for a second,
   press Enter at the end of a code line (the editor indents the new line) and
   wait for the ghost text: *first suggestion after a jump*. The line that
   follows there in the real file is taken out of the document beforehand: it is
   what the user is about to write, and what the suggestion is scored against;
3. type the first characters of the true next line, one request per key (a
   request that a newer key overtakes is superseded in the server):
   *continued typing*;
4. accept the suggestion (Tab) and take the next one: *Tab-Tab-Tab*;
5. after all files: come back to every place and press Enter there again:
   *revisit*, or *after a file switch* when the previous place was in another file.

Each run starts a fresh server and engine. Runs: `adaptive` (the defaults),
and the fixed-budget path (`adaptiveBudget=false`: always `contextTokens`, no
warm-up or prefetch) at 1,536 (the default budget) and 512 tokens, in the same
session on the same places. The engine's RAM state cache is on in every run.

Run: python bench/navigation.py [--places 4] [--runs adaptive,fixed-1536,fixed-512]
Writes its table to BENCHMARKS.md between the navigation markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsprotocol import types
from pytest_lsp import LanguageClient, client_capabilities

from bench.common import STDLIB, cpu_description, percentile, write_section
from tests.harness import server_env

START, END = "<!-- navigation:start -->", "<!-- navigation:end -->"
BENCHMARKS = ROOT / "BENCHMARKS.md"
JS_FILE = ROOT / "editors/vscode/node_modules/vscode-languageclient/lib/common/client.js"
FILES = [STDLIB / "argparse.py", JS_FILE, STDLIB / "tarfile.py"]
READ_S = 1.5  # after opening a file
LOOK_S = 1.0  # after a jump, before pressing Enter
KEY_S = 0.15  # between typed characters
RUNS = {
    "adaptive": {},
    "fixed-1536": {"QWEN_LSP_ADAPTIVE_BUDGET": "false"},
    "fixed-512": {"QWEN_LSP_ADAPTIVE_BUDGET": "false", "QWEN_LSP_CONTEXT_TOKENS": "512"},
}


def _utf16(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def _position(text: str, pos: int) -> types.Position:
    start = text.rfind("\n", 0, pos) + 1
    return types.Position(line=text.count("\n", 0, pos), character=_utf16(text[start:pos]))


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def pick_places(text: str, n: int, seed: int) -> list[int]:
    """Line indices L inside functions: L is code, L+1 is a non-empty indented code line.

    Spread over the file: one place from each of n equal slices.
    """
    lines = text.split("\n")
    good = []
    for i in range(40, len(lines) - 2):
        cur, nxt = lines[i], lines[i + 1]
        if not cur.strip() or not nxt.strip() or not _indent(nxt):
            continue
        s = nxt.strip()
        if s.startswith(("#", "//", "*", "/*", '"""', "'''")) or len(s) < 6:
            continue
        if not any(c in s for c in "=()[]{}:;.") or s.startswith(("'", '"')):
            continue  # prose in a docstring or comment block, or a bare string
        if cur.rstrip().endswith(("\\", ",", "(", "[")) or cur.strip().startswith(("#", "//", "*")):
            continue
        good.append(i)
    rng = random.Random(seed)
    out = []
    for k in range(n):
        lo, hi = len(good) * k // n, len(good) * (k + 1) // n
        if hi > lo:
            out.append(good[rng.randrange(lo, hi)])
    return out


@dataclass
class Doc:
    uri: str
    language: str
    text: str
    version: int = 1


@dataclass
class RunResult:
    first: list[float] = field(default_factory=list)
    answered: int = 0
    asked: int = 0
    exact: int = 0
    typing: list[float] = field(default_factory=list)
    tab: list[float] = field(default_factory=list)
    revisit: list[float] = field(default_factory=list)
    switch: list[float] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] | None = None
    engine_rss_mb: float | None = None


class Session:
    def __init__(self, client: LanguageClient) -> None:
        self.client = client
        self.docs: dict[str, Doc] = {}
        self.log: list[tuple[Doc, int, int]] = []  # every insertion: (doc, offset, length)

    def mark(self, doc: Doc, offset: int) -> tuple[Doc, int, int]:
        return (doc, offset, len(self.log))

    def where(self, mark: tuple[Doc, int, int]) -> int:
        """A marked offset after the insertions made since (those before it move it)."""
        doc, offset, since = mark
        for d, at, n in self.log[since:]:
            if d is doc and at < offset:
                offset += n
        return offset

    def open(self, path: Path, text: str) -> Doc:
        uri = path.resolve().as_uri()
        lang = "javascript" if path.suffix == ".js" else "python"
        doc = Doc(uri, lang, text)
        self.docs[uri] = doc
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=lang, version=1,
                                                 text=doc.text)))
        return doc

    def insert(self, doc: Doc, pos: int, text: str) -> None:
        at = _position(doc.text, pos)
        self.log.append((doc, pos, len(text)))
        doc.text = doc.text[:pos] + text + doc.text[pos:]
        doc.version += 1
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=doc.uri,
                                                                version=doc.version),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=at, end=at), text=text)]))

    def cursor(self, doc: Doc, pos: int) -> None:
        p = _position(doc.text, pos)
        self.client.protocol.notify("qwen/cursor", {
            "textDocument": {"uri": doc.uri},
            "position": {"line": p.line, "character": p.character}})

    def request(self, doc: Doc, pos: int) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=doc.uri),
            position=_position(doc.text, pos),
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic))))

    async def timed(self, doc: Doc, pos: int) -> tuple[float, str]:
        t = time.perf_counter()
        res = await self.request(doc, pos)
        return time.perf_counter() - t, _text(res)


def _text(res: Any) -> str:
    if not res or not res.items:
        return ""
    item = res.items[0]
    return str(item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value)


async def _start(env: dict[str, str], log: Path | None = None) -> LanguageClient:
    from pytest_lsp import ClientServerConfig

    command = [sys.executable, "-m", "qwen_lsp", "--stdio"]
    if log is not None:
        # The server's debug log (one line per completion flight) goes to the file.
        env = {**env, "QWEN_LSP_LOG_LEVEL": "debug"}
        command = ["sh", "-c", 'exec "$0" -m qwen_lsp --stdio 2>>"$1"', sys.executable,
                   str(log)]
    config = ClientServerConfig(server_command=command, server_env=env)
    client = await config.start()
    await client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code@v1.65.2"),
        client_info=types.ClientInfo(name="Visual Studio Code")))
    return client


async def _wait_engine(client: LanguageClient) -> None:
    for _ in range(1200):
        st = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="qwen.status"))
        eng = st.get("localEngine") or {}
        if eng.get("state") == "ready":
            return
        if eng.get("state") == "failed":
            raise SystemExit(f"local engine failed: {eng.get('last_error')}")
        await asyncio.sleep(0.1)
    raise SystemExit("local engine did not start")


async def run_once(name: str, places: dict[Path, list[int]],
                   log: Path | None = None) -> RunResult:
    env = server_env(Path(tempfile.mkdtemp(prefix="qwen-nav-")), **RUNS[name])
    client = await _start(env, log)
    out = RunResult()
    s = Session(client)

    def phase(what: str) -> None:
        if log is not None:
            with log.open("a", encoding="utf-8") as f:
                f.write(f"== {name}: {what}\n")
    visited: list[tuple[Doc, int, int]] = []  # marks: the start of the line we left
    try:
        await _wait_engine(client)
        for path, lines in places.items():
            # The line after each place is not written yet: it is what the user
            # is about to type, and what the suggestion is scored against.
            original = path.read_text(encoding="utf-8").split("\n")
            kept = [t for k, t in enumerate(original) if k - 1 not in lines]
            doc = s.open(path, "\n".join(kept))
            marks = [(s.mark(doc, _line_end_offset(doc.text, i - n)), original[i + 1])
                     for n, i in enumerate(sorted(lines))]
            await asyncio.sleep(READ_S)
            for mark, true_next in marks:
                pos = s.where(mark)
                s.cursor(doc, pos)
                await asyncio.sleep(LOOK_S)
                phase(f"first after a jump, {path.name}")
                indent = _indent(true_next)
                s.insert(doc, pos, "\n" + indent)
                pos += 1 + len(indent)
                latency, shown = await s.timed(doc, pos)
                out.first.append(latency)
                phase(f"answered in {latency:.2f}s: {shown[:60]!r}")
                out.asked += 1
                first_line = shown.split("\n", 1)[0].strip()
                if first_line:
                    out.answered += 1
                if first_line == true_next.strip():
                    out.exact += 1
                # Continued typing: the first 3 characters of the true line.
                pending: asyncio.Future[Any] | None = None
                typed_t = 0.0
                phase("typing")
                for ch in true_next.strip()[:3]:
                    # The newer request supersedes the older one in the server,
                    # which answers it empty (VS Code would also cancel it).
                    s.insert(doc, pos, ch)
                    pos += len(ch)
                    typed_t = time.perf_counter()
                    pending = s.request(doc, pos)
                    await asyncio.sleep(KEY_S)
                shown = ""
                if pending is not None:
                    with contextlib.suppress(Exception):
                        shown = _text(await pending)
                    out.typing.append(time.perf_counter() - typed_t)
                    phase(f"answered in {out.typing[-1]:.2f}s: {shown[:60]!r}")
                if shown:
                    # Tab: accept the suggestion, then take the next one.
                    s.insert(doc, pos, shown)
                    pos += len(shown)
                    await asyncio.sleep(0.3)  # the user reads what was inserted
                    phase("tab")
                    latency, tab_shown = await s.timed(doc, pos)
                    out.tab.append(latency)
                    phase(f"answered in {latency:.2f}s: {tab_shown[:60]!r}")
                visited.append(s.mark(doc, doc.text.rfind("\n", 0, pos) + 1))
        # Revisits: back to every place, Enter at the end of the line we left there.
        prev: Doc | None = visited[-1][0] if visited else None
        for mark in visited:
            doc = mark[0]
            line_start = s.where(mark)
            nl = doc.text.find("\n", line_start)
            end = len(doc.text) if nl < 0 else nl
            s.cursor(doc, end)
            await asyncio.sleep(0.5)
            phase("revisit" if doc is prev else "file switch")
            indent = _indent(doc.text[line_start:end])
            s.insert(doc, end, "\n" + indent)
            latency, again = await s.timed(doc, end + 1 + len(indent))
            (out.switch if doc is not prev else out.revisit).append(latency)
            phase(f"answered in {latency:.2f}s: {again[:60]!r}")
            prev = doc
        out.stats = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="qwen.stats"))
        status = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="qwen.status"))
        out.cache = status.get("localCache")
        pid = (status.get("localEngine") or {}).get("pid")
        if pid:
            out.engine_rss_mb = _rss_mb(pid)
    finally:
        try:
            await client.shutdown_session()
        finally:
            await client.stop()
    return out


def _line_end_offset(text: str, line: int) -> int:
    pos = 0
    for _ in range(line):
        pos = text.index("\n", pos) + 1
    nl = text.find("\n", pos)
    return len(text) if nl < 0 else nl


def _rss_mb(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - a measurement, not a requirement
        return None


def _p(values: list[float], q: float) -> str:
    v = percentile(values, q)
    return "–" if v is None else f"{v:.2f}"


def render(results: dict[str, RunResult], places: dict[Path, list[int]], load: str) -> str:
    n_places = sum(len(v) for v in places.values())
    files = ", ".join(f"`{p.name}` ({p.read_text(encoding='utf-8').count(chr(10))} lines)"
                      for p in places)
    head = [
        START,
        "## Navigation: moving around real files with the local engine",
        "",
        (f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()} ({cpu_description()}), "
         f"{os.cpu_count()} cores "
        f"({load}), bundled Qwen2.5-Coder-0.5B Q4_K_M, default settings unless the run says "
        f"otherwise. Files: {files}; {n_places} places, each: jump, Enter, 3 typed characters, "
        "Tab and the next suggestion; then every place again. "
        "Rerun: `python bench/navigation.py`."),
        "",
        ("Seconds from the request to the answer. *answered*: share of Enter requests whose "
        "true next line is not empty that got a suggestion. *exact*: first suggested line "
        "equals the true next line."),
        "",
        ("| run | first after jump p50 | p90 | answered | exact | time-outs | typing p50 | "
        "Tab p50 | revisit p50 | after file switch p50 | engine RSS MB |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = []
    for name, r in results.items():
        timeouts = int(r.stats.get("timeboxed", 0)) + int(
            (r.stats.get("errors") or {}).get("timeout", 0))
        rss = "–" if r.engine_rss_mb is None else f"{r.engine_rss_mb:.0f}"
        label = {"adaptive": "adaptive (default)",
                 "fixed-1536": "fixed 1,536 tokens (adaptiveBudget=false)",
                 "fixed-512": "fixed 512 tokens (adaptiveBudget=false, contextTokens=512)"
                 }.get(name) or f"{name} ({', '.join(f'{k}={v}' for k, v in RUNS[name].items())})"
        rows.append(
            f"| {label} | {_p(r.first, 0.5)} | {_p(r.first, 0.9)} | "
            f"{r.answered}/{r.asked} | {r.exact}/{r.asked} | {timeouts} | {_p(r.typing, 0.5)} | "
            f"{_p(r.tab, 0.5)} | {_p(r.revisit, 0.5)} | {_p(r.switch, 0.5)} | {rss} |")
    tail = ["", "Engine cache after the adaptive run (`qwen.status` → `localCache`): "]
    cache = results.get("adaptive")
    if cache and cache.cache:
        tail[-1] += "`" + json.dumps(cache.cache) + "`"
        st = cache.stats
        tail.append("")
        tail.append(f"Adaptive run: {st.get('prefills', 0)} pre-fill chunks, "
                    f"{st.get('prefetches', 0)} prefetches, {st.get('cacheHits', 0)} cache hits, "
                    f"{st.get('upstreamRequests', 0)} completions sent to the engine.")
    return "\n".join(head + rows + tail) + "\n" + END


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--places", type=int, default=4, help="places per file")
    ap.add_argument("--runs", default="adaptive,fixed-1536,fixed-512")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--files", default=None, help="comma-separated paths (default: 3 real files)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--env-run", action="append", default=[], metavar="NAME:VAR=VALUE,...",
                    help="an extra run with these server environment variables (name it in "
                         "--runs too)")
    ap.add_argument("--server-log", type=Path, default=None,
                    help="append the server's debug log (one line per completion flight) "
                         "and the phases of the run to this file")
    args = ap.parse_args(argv)
    for spec in args.env_run:
        name, _, pairs = spec.partition(":")
        RUNS[name] = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    files = [Path(f) for f in args.files.split(",")] if args.files else FILES
    for f in files:
        if not f.exists():
            raise SystemExit(f"missing {f} (the JS file comes with `npm ci` in editors/vscode)")
    places = {f: pick_places(f.read_text(encoding="utf-8"), args.places, args.seed)
              for f in files}
    load_before = os.getloadavg()[0]
    results: dict[str, RunResult] = {}
    for name in args.runs.split(","):
        t = time.perf_counter()
        results[name] = asyncio.run(run_once(name, places, args.server_log))
        r = results[name]
        print(f"{name}: {time.perf_counter() - t:.0f} s, first p50 {_p(r.first, 0.5)}, "
              f"answered {r.answered}/{r.asked}, exact {r.exact}", file=sys.stderr)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    section = render(results, places, load)
    print(section)
    if not args.no_write:
        write_section(BENCHMARKS, START, END, section)


if __name__ == "__main__":
    main()
