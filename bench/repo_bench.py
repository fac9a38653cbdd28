"""Repository-level completion on CrossCodeEval (Python), end to end through the server.

CrossCodeEval (Ding et al., NeurIPS 2023 Datasets and Benchmarks) is a line
completion benchmark whose answers need code from other files of the same
repository. Its data is Apache-2.0 and lives in the benchmark's public
repository (github.com/amazon-science/cceval) as one archive:

    git clone https://github.com/amazon-science/cceval
    tar -xvJf cceval/data/crosscodeeval_data.tar.xz -C /some/dir
    python bench/repo_bench.py --data /some/dir/crosscodeeval_data/python/line_completion_rg1_bm25.jsonl

Nothing of it is committed here. Each row has ``prompt`` (the file up to the
cursor, which sits mid-line), ``groundtruth`` (the rest of that line),
``right_context`` (the file after it), ``crossfile_context`` (``text``: the
retrieved snippets as one comment block; ``list``: the snippets with their
``filename``) and ``metadata`` (``task_id``, ``repository``, ``file``).

Configurations, all on the bundled local model:

* ``lsp``: ``python -m qwen_lsp`` over stdio at its default settings, crossFile
  off; the document is ``prompt + right_context`` with the cursor between them,
  asked with a manual inline-completion request.
* ``lsp+xfile``: crossFile on, workspace root a temporary folder that holds each
  retrieved snippet as a file at its repository path (the benchmark ships the
  snippets, not the repositories); those files are opened in the editor first,
  as the files a developer has open, then the task's file.
* ``harness``: the model called directly with the layout Qwen's own evaluation
  uses for this benchmark: ``<|fim_prefix|>`` + code before + ``<|fim_suffix|>``
  + code after + the cross-file block + ``<|fim_middle|>``, greedy, first line.
  Qwen's budgets (8,192 total: 2,048 after the cursor, 2,048 cross-file) are
  scaled to the engine window (4,096: 1,024 and 1,024).
* ``harness-noxf``: the same without the cross-file block.

Metrics as CrossCodeEval reports them for line completion: exact match of the
first line (whitespace-stripped) and edit similarity (difflib ratio, 0-100),
with Wilson / bootstrap 95 % intervals and paired differences.

Run under ``nice``; a 50-task sample takes roughly half an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quality import (
    ENGINE_WINDOW,
    THREADS,
    Raw,
    _ask,
    _close,
    _open,
    _server_env,
    _start,
    bootstrap,
    wilson,
)
from qwen_lsp.context import CHARS_PER_TOKEN
from qwen_lsp.documents import Document
from qwen_lsp.prompts import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from qwen_lsp.providers.base import QWEN_SPECIAL_TOKENS
from qwen_lsp.providers.local import LocalEngine

GEN_TOKENS = 50  # CrossCodeEval's generation length for line completion
RIGHT_TOKENS = 1024
CROSS_TOKENS = 1024
MARK_START = "<!-- repo-bench:start -->"
MARK_END = "<!-- repo-bench:end -->"


@dataclass
class RepoTask:
    id: str
    path: str  # the file's path in its repository
    prompt: str
    truth: str
    right: str
    cross_text: str
    snippets: list[tuple[str, str]]  # (repository path, retrieved chunk)


def load_tasks(path: Path, n: int, seed: int) -> list[RepoTask]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    random.Random(seed).shuffle(rows)
    tasks = []
    for row in rows[:n]:
        meta = row.get("metadata", {})
        cross = row.get("crossfile_context") or {}
        snippets = [(c.get("filename", f"ctx{i}.py"), c.get("retrieved_chunk", ""))
                    for i, c in enumerate(cross.get("list") or [])]
        tasks.append(RepoTask(
            id=str(meta.get("task_id", len(tasks))), path=str(meta.get("file", "main.py")),
            prompt=row["prompt"], truth=row["groundtruth"], right=row.get("right_context", ""),
            cross_text=cross.get("text", ""), snippets=snippets))
    return tasks


@dataclass
class Result:
    em: bool
    es: float
    shown: bool


def score_line(pred: str, truth: str) -> Result:
    line = pred.split("\n", 1)[0].strip() if pred else ""
    want = truth.split("\n", 1)[0].strip()
    if not line:
        return Result(False, 0.0, False)
    return Result(line == want, difflib.SequenceMatcher(None, line, want).ratio(), True)


def _cut_left(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[len(text) - chars :]


def harness_prompt(task: RepoTask, *, cross: bool) -> str:
    """Qwen's CrossCodeEval layout (right context, then cross-file), scaled to the window."""
    total = int((ENGINE_WINDOW - GEN_TOKENS - 16) * CHARS_PER_TOKEN)
    right = task.right[: int(RIGHT_TOKENS * CHARS_PER_TOKEN)]
    block = ("\n\n" + task.cross_text)[: int(CROSS_TOKENS * CHARS_PER_TOKEN)] if cross else ""
    left = _cut_left(task.prompt, total - len(right) - len(block))
    return f"{FIM_PREFIX}{left}{FIM_SUFFIX}{right}{block}{FIM_MIDDLE}"


async def run_harness(tasks: list[RepoTask], log: Any) -> dict[str, dict[str, Result]]:
    engine = LocalEngine(threads=THREADS["n"], context_size=ENGINE_WINDOW)
    base, key = await engine.ensure_started()
    raw = Raw(base, key)
    out: dict[str, dict[str, Result]] = {"harness": {}, "harness-noxf": {}}
    try:
        for name, cross in (("harness-noxf", False), ("harness", True)):
            for i, task in enumerate(tasks):
                text, lat = await raw.complete(harness_prompt(task, cross=cross), GEN_TOKENS,
                                               [*QWEN_SPECIAL_TOKENS, "\n"])
                out[name][task.id] = score_line(text, task.truth)
                log(f"  {name} {i + 1}/{len(tasks)} {lat:.1f}s em={int(out[name][task.id].em)}")
    finally:
        await raw.client.aclose()
        await engine.stop()
    return out


async def run_lsp(tasks: list[RepoTask], *, cross_file: bool, log: Any) -> dict[str, Result]:
    out: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "repo"
        work.mkdir()
        env = _server_env(Path(tmp), QWEN_LSP_PROVIDER="local",
                          QWEN_LSP_CROSS_FILE="true" if cross_file else "false",
                          QWEN_LSP_TIMEOUT_MS="90000")
        client, encoding = await _start(env, work)
        try:
            for i, task in enumerate(tasks):
                opened: list[str] = []
                if cross_file:
                    for rel, chunk in task.snippets:
                        file = work / rel
                        file.parent.mkdir(parents=True, exist_ok=True)
                        file.write_text(chunk, encoding="utf-8")
                        _open(client, file.as_uri(), chunk)
                        opened.append(file.as_uri())
                target = work / task.path
                target.parent.mkdir(parents=True, exist_ok=True)
                text = task.prompt + task.right
                target.write_text(text, encoding="utf-8")
                uri = target.as_uri()
                _open(client, uri, text)
                doc = Document(uri=uri, text=text)
                line, char = doc.position_at(len(task.prompt), encoding)
                t0 = time.perf_counter()
                result = await _ask(client, uri, line, char)
                latency = time.perf_counter() - t0
                pred = ""
                if result and result.items:
                    item = result.items[0]
                    pred = item.insert_text if isinstance(item.insert_text, str) else (
                        item.insert_text.value)
                out[task.id] = score_line(pred, task.truth)
                for u in [uri, *opened]:
                    _close(client, u)
                log(f"  lsp{'+x' if cross_file else ''} {i + 1}/{len(tasks)} {latency:.1f}s "
                    f"em={int(out[task.id].em)}")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.shutdown_session(), 10)
            await client.stop()
    return out


def report(tasks: list[RepoTask], runs: dict[str, dict[str, Result]], meta: dict[str, Any]) -> str:
    ids = [t.id for t in tasks]
    lines = [(f"Run: `{meta['command']}` — {meta['date']}, {len(ids)} Python tasks of "
             f"`{meta['data']}` (seed {meta['seed']}), wall time {meta['wall_min']:.1f} min."), "",
             "| config | n | exact match % [95% CI] | edit sim. % [95% CI] |",
             "| --- | --- | --- | --- |"]
    for name, res in runs.items():
        em = sum(res[i].em for i in ids)
        es = [100 * res[i].es for i in ids]
        lo, hi = wilson(em, len(ids))
        blo, bhi = bootstrap(es)
        lines.append(f"| {name} | {len(ids)} | {100 * em / len(ids):.1f} [{100 * lo:.1f}, "
                     f"{100 * hi:.1f}] | {statistics.fmean(es):.1f} [{blo:.1f}, {bhi:.1f}] |")
    lines += ["", "| comparison | Δ exact match [95% CI] | Δ edit sim. [95% CI] |",
              "| --- | --- | --- |"]
    for a, b in (("lsp+xfile", "lsp"), ("lsp", "harness-noxf"), ("lsp+xfile", "harness"),
                 ("harness", "harness-noxf")):
        if a not in runs or b not in runs:
            continue
        d_em = [float(runs[a][i].em) - float(runs[b][i].em) for i in ids]
        d_es = [runs[a][i].es - runs[b][i].es for i in ids]
        ci_em, ci_es = bootstrap(d_em), bootstrap(d_es)
        lines.append(f"| {a} − {b} | {100 * statistics.fmean(d_em):+.1f} [{100 * ci_em[0]:.1f}, "
                     f"{100 * ci_em[1]:.1f}] | {100 * statistics.fmean(d_es):+.1f} "
                     f"[{100 * ci_es[0]:.1f}, {100 * ci_es[1]:.1f}] |")
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a CrossCodeEval python/*.jsonl file")
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="engine threads")
    ap.add_argument("--write-md", action="store_true")
    args = ap.parse_args()
    THREADS["n"] = args.threads
    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"{data}: no such file. See the docstring of bench/repo_bench.py for where "
                 "CrossCodeEval's data comes from.")
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {msg}", flush=True)

    tasks = load_tasks(data, args.n, args.seed)
    runs = await run_harness(tasks, log)
    runs["lsp"] = await run_lsp(tasks, cross_file=False, log=log)
    runs["lsp+xfile"] = await run_lsp(tasks, cross_file=True, log=log)
    meta = {"command": "python bench/repo_bench.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "data": data.name,
            "seed": args.seed, "wall_min": (time.time() - started) / 60}
    table = report(tasks, runs, meta)
    print(table)
    if args.write_md:
        path = ROOT / "BENCHMARKS.md"
        text = path.read_text(encoding="utf-8")
        block = f"{MARK_START}\n### CrossCodeEval through the server (`bench/repo_bench.py`)\n\n" \
                f"{table}\n{MARK_END}"
        if MARK_START in text:
            head, rest = text.split(MARK_START, 1)
            text = head + block + rest.split(MARK_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
