"""RepoEval function-level completion (RepoCoder), end to end through the server.

RepoEval (Zhang et al., "RepoCoder", EMNLP 2023; data MIT, github.com/microsoft/CodeT,
folder RepoCoder) asks for the body of a function in a real repository, given the
file before it. This script uses its function-level set with 2k-token prompts
(`function_level_completion_2k_context_codex.test.jsonl`, 455 Python tasks in 8
repositories) and the repositories' sources (`repositories/function_level.zip`).
Nothing of it is committed here. The official archives are larger than this
machine's repository snapshots allow; byte-identical copies of the jsonl file
and the sources are in the public repositories Elendil3703/RepoEval_Exec
(`dataset/`, and `amazon-science--patchcore-inspection/patchcore`) and
zcox10/repo-coder-v2 (`data/repositories/`). Lay them out as

    DATA/function_level_completion_2k_context_codex.test.jsonl
    DATA/repositories/<owner>_<repo>/...   (fpath_tuple of each task resolves here)

and run  python bench/repoeval.py --data DATA [-n 40] [--write-md]

Each task: the file as it is in the repository, with the function's body (the
task's ``ground_truth`` lines) taken out and a blank line in its place, indented
like the body's first line, the cursor at its end: a user who pressed Enter after
the signature and docstring. Unlike the RepoCoder prompts, the code after the
function stays in the file (an editor has it).

Configurations, all on the bundled local model:

* ``lsp``: ``python -m qwen_lsp`` at its default settings (cross-file context on,
  the workspace root the task's repository, only the task's file open), asked with
  a manual inline-completion request; ``lsp`` is its first answer, ``lsp settled``
  the same request again once the stream is done (a multi-line answer comes first
  with the lines it has, then whole).
* ``lsp-noxf``: the same with ``crossFile`` off.
* ``harness``: the model called directly with its own FIM layout: ``<|fim_prefix|>``
  + the file before the cursor + ``<|fim_suffix|>`` + the file after it +
  ``<|fim_middle|>``, cut to the engine's window (the text before the cursor keeps
  three quarters; cut by a fifth more while the engine says it is too long),
  greedy, the same output limit as the server (``maxTokens``).

Metrics: edit similarity of the body (difflib ratio, 0-100, trailing whitespace
and trailing blank lines ignored), exact match of the whole body and of its first
line; 95 % intervals (Wilson, bootstrap) and paired differences.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quality import (
    ENGINE_WINDOW,
    SETTLE_S,
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
from qwen_lsp.settings import Settings

DATA_FILE = "function_level_completion_2k_context_codex.test.jsonl"
MAX_TOKENS = Settings().max_tokens  # the server's default output limit
MARK_START = "<!-- repoeval:start -->"
MARK_END = "<!-- repoeval:end -->"


@dataclass
class FuncTask:
    id: str
    repo: str
    rel: str  # path inside the repository
    doc: str  # the file with the body taken out
    offset: int  # cursor
    truth: str  # the body, without the indentation already on the cursor line


def load_tasks(data: Path, n: int, seed: int) -> list[FuncTask]:
    rows = [json.loads(line) for line in
            (data / DATA_FILE).read_text(encoding="utf-8").splitlines() if line.strip()]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    tasks = []
    for idx in order[:n]:
        meta = rows[idx]["metadata"]
        parts = meta["fpath_tuple"]
        file = data / "repositories" / Path(*parts)
        lines = file.read_text(encoding="utf-8").replace("\r\n", "\n").split("\n")
        body = meta["ground_truth"].replace("\r\n", "\n").rstrip("\n").split("\n")
        at = meta["lineno"]
        if [ln.rstrip() for ln in lines[at:at + len(body)]] != [ln.rstrip() for ln in body]:
            raise SystemExit(f"task {idx}: {file} does not hold its ground truth at {at}")
        first = body[0]
        indent = first[: len(first) - len(first.lstrip(" \t"))]
        doc_lines = lines[:at] + [indent] + lines[at + len(body):]
        offset = sum(len(ln) + 1 for ln in lines[:at]) + len(indent)
        truth = "\n".join(body)[len(indent):]
        tasks.append(FuncTask(id=str(idx), repo=parts[0], rel=str(Path(*parts[1:])),
                              doc="\n".join(doc_lines), offset=offset, truth=truth))
    return tasks


@dataclass
class Result:
    es: float
    em: bool
    first_em: bool
    shown: bool


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def score(pred: str | None, truth: str) -> Result:
    if not pred or not pred.strip():
        return Result(0.0, False, False, False)
    p, t = _norm(pred), _norm(truth)
    first = p.split("\n", 1)[0].strip() == t.split("\n", 1)[0].strip()
    return Result(100 * difflib.SequenceMatcher(None, p, t).ratio(), p == t, first, True)


def harness_prompt(task: FuncTask, scale: float = 1.0) -> str:
    total = int((ENGINE_WINDOW - MAX_TOKENS - 16) * CHARS_PER_TOKEN * scale)
    before, after = task.doc[: task.offset], task.doc[task.offset:]
    keep_after = min(len(after), max(total // 4, total - len(before)))
    keep_before = total - keep_after
    return (f"{FIM_PREFIX}{before[max(0, len(before) - keep_before):]}{FIM_SUFFIX}"
            f"{after[:keep_after]}{FIM_MIDDLE}")


async def run_harness(tasks: list[FuncTask], log: Any) -> dict[str, Result]:
    engine = LocalEngine(threads=THREADS["n"], context_size=ENGINE_WINDOW)
    base, key = await engine.ensure_started()
    raw = Raw(base, key)
    out: dict[str, Result] = {}
    try:
        for i, task in enumerate(tasks):
            scale = 1.0
            while True:
                try:
                    text, lat = await raw.complete(harness_prompt(task, scale), MAX_TOKENS,
                                                   list(QWEN_SPECIAL_TOKENS))
                    break
                except httpx.HTTPStatusError as exc:
                    # Code denser than CHARS_PER_TOKEN: more tokens than the window.
                    if exc.response.status_code != 400 or scale < 0.3:
                        raise
                    scale *= 0.8
            out[task.id] = score(text, task.truth)
            log(f"  harness {i + 1}/{len(tasks)} {lat:.1f}s es={out[task.id].es:.0f}")
    finally:
        await raw.client.aclose()
        await engine.stop()
    return out


def _text(result: Any) -> str | None:
    if not result or not result.items:
        return None
    item = result.items[0]
    return item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value


async def run_lsp(tasks: list[FuncTask], data: Path, *, cross_file: bool, log: Any,
                  settled: dict[str, Result] | None = None) -> dict[str, Result]:
    out: dict[str, Result] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repos = Path(tmp) / "repositories"
        shutil.copytree(data / "repositories", repos)
        env = _server_env(Path(tmp), QWEN_LSP_PROVIDER="local",
                          QWEN_LSP_CROSS_FILE="true" if cross_file else "false",
                          QWEN_LSP_TIMEOUT_MS="90000")
        by_repo: dict[str, list[FuncTask]] = {}
        for task in tasks:
            by_repo.setdefault(task.repo, []).append(task)
        done = 0
        for repo, group in by_repo.items():
            # One server per repository, its workspace root the repository.
            client, encoding = await _start(env, repos / repo)
            try:
                for task in group:
                    target = repos / repo / task.rel
                    original = target.read_text(encoding="utf-8")
                    target.write_text(task.doc, encoding="utf-8")  # the body is not on disk
                    uri = target.as_uri()
                    _open(client, uri, task.doc)
                    line, char = Document(uri=uri, text=task.doc).position_at(
                        task.offset, encoding)
                    t0 = time.perf_counter()
                    first = await _ask(client, uri, line, char)
                    latency = time.perf_counter() - t0
                    out[task.id] = score(_text(first), task.truth)
                    if settled is not None:
                        await asyncio.sleep(SETTLE_S)
                        again = await _ask(client, uri, line, char)
                        settled[task.id] = score(_text(again), task.truth)
                    _close(client, uri)
                    target.write_text(original, encoding="utf-8")
                    done += 1
                    log(f"  lsp{'' if cross_file else '-noxf'} {done}/{len(tasks)} "
                        f"{latency:.1f}s es={out[task.id].es:.0f}"
                        + (f" settled {settled[task.id].es:.0f}" if settled is not None else ""))
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.shutdown_session(), 10)
                await client.stop()
    return out


def report(tasks: list[FuncTask], runs: dict[str, dict[str, Result]], meta: dict[str, Any]) -> str:
    ids = [t.id for t in tasks]
    n = len(ids)
    lines = [(f"Run: `{meta['command']}`, {meta['date']}, {n} of RepoEval's 455 function-level "
              f"tasks (2k context; seed {meta['seed']}, {len({t.repo for t in tasks})} "
              f"repositories), {meta['cpu']}, wall time {meta['wall_min']:.0f} min. "
              f"Output limit {MAX_TOKENS} tokens everywhere (the server's default)."), "",
             ("| config | edit sim. % [95% CI] | exact body % | exact first line % [95% CI] "
              "| shown |"), "| --- | --- | --- | --- | --- |"]
    for name, res in runs.items():
        es = [res[i].es for i in ids]
        em = sum(res[i].em for i in ids)
        fe = sum(res[i].first_em for i in ids)
        lo, hi = wilson(fe, n)
        blo, bhi = bootstrap(es)
        lines.append(f"| {name} | {statistics.fmean(es):.1f} [{blo:.1f}, {bhi:.1f}] | "
                     f"{100 * em / n:.1f} | {100 * fe / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] "
                     f"| {sum(res[i].shown for i in ids)}/{n} |")
    lines += ["", "| comparison | Δ edit sim. [95% CI] | Δ exact first line [95% CI] |",
              "| --- | --- | --- |"]
    for a, b in (("lsp settled", "harness"), ("lsp", "harness"), ("lsp settled", "lsp-noxf settled"),
                 ("lsp", "lsp-noxf")):
        if a not in runs or b not in runs:
            continue
        d_es = [runs[a][i].es - runs[b][i].es for i in ids]
        d_fe = [100 * (float(runs[a][i].first_em) - float(runs[b][i].first_em)) for i in ids]
        ci_es, ci_fe = bootstrap(d_es), bootstrap(d_fe)
        lines.append(f"| {a} − {b} | {statistics.fmean(d_es):+.1f} [{ci_es[0]:.1f}, "
                     f"{ci_es[1]:.1f}] | {statistics.fmean(d_fe):+.1f} [{ci_fe[0]:.1f}, "
                     f"{ci_fe[1]:.1f}] |")
    return "\n".join(lines)


async def main() -> None:
    from bench.common import cpu_description

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path,
                    help=f"folder with {DATA_FILE} and repositories/")
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="engine threads")
    ap.add_argument("--no-noxf", action="store_true", help="skip the crossFile-off run")
    ap.add_argument("--write-md", action="store_true")
    args = ap.parse_args()
    THREADS["n"] = args.threads
    if not (args.data / DATA_FILE).is_file():
        sys.exit(f"{args.data / DATA_FILE}: no such file (see the docstring of "
                 "bench/repoeval.py for where RepoEval's data comes from)")
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {msg}", flush=True)

    tasks = load_tasks(args.data, args.n, args.seed)
    runs: dict[str, dict[str, Result]] = {"harness": await run_harness(tasks, log)}
    settled: dict[str, Result] = {}
    runs["lsp"] = await run_lsp(tasks, args.data, cross_file=True, log=log, settled=settled)
    runs["lsp settled"] = settled
    if not args.no_noxf:
        settled_noxf: dict[str, Result] = {}
        runs["lsp-noxf"] = await run_lsp(tasks, args.data, cross_file=False, log=log,
                                         settled=settled_noxf)
        runs["lsp-noxf settled"] = settled_noxf
    meta = {"command": "python bench/repoeval.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "seed": args.seed,
            "cpu": cpu_description(), "wall_min": (time.time() - started) / 60}
    table = report(tasks, runs, meta)
    print(table)
    if args.write_md:
        path = ROOT / "BENCHMARKS.md"
        text = path.read_text(encoding="utf-8")
        block = (f"{MARK_START}\n### RepoEval function-level through the server "
                 f"(`bench/repoeval.py`)\n\n{table}\n{MARK_END}")
        if MARK_START in text:
            head, rest = text.split(MARK_START, 1)
            text = head + block + rest.split(MARK_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
