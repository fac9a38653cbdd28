"""Completion quality on real code, end to end through the language server.

Run: ``nice -n 15 python bench/quality.py --write-md`` (about 40 min on 2
shared cores at the defaults: 40 line, 30 single, 12 multi tasks) or
``--quick`` (a few minutes). ``--write-md`` replaces the quality section of
BENCHMARKS.md with the results. ``--from-json bench/quality-results.json
--rescore`` re-runs only the post-processing over the saved model outputs.

Tasks are cut deterministically (``--seed``) from code nobody here wrote: the
Python standard library on this machine and the JavaScript files bundled with
node's npm. Four kinds:

* line: one whole line was deleted and the cursor sits at column 0 of its
  empty line; the answer is the line. In JavaScript a third of these lines
  start with a closer (``}``, ``} else {``, ``});``).
* single: the cursor is mid-line, the rest of the line was deleted; the
  answer is that rest.
* multi: the body (2-8 lines) of a block was deleted, the cursor sits on an
  indented empty line below the block opener; the answer is the body.
* cross (``--cross N``): like single, but the deleted text starts with a name
  defined in a sibling module of the same stdlib package, and within the
  cursor's window that name does not appear.

Configurations, all on the same local model (Qwen2.5-Coder-0.5B GGUF):

* ``lsp``: ``python -m qwen_lsp`` over stdio at its default settings, provider
  local (it starts its own llama.cpp engine), manual inline-completion
  requests, crossFile off; this is the product: prompt layout + streaming early
  stop + post-processing. ``--also-context-tokens N`` adds a labelled
  ``lsp@N`` pass.
* ``lsp+xfile``: crossFile on, workspace root the stdlib directory; for cross
  tasks the sibling module is opened first.
* ``harness``: the model's published FIM layout sent straight to the engine:
  ``<|fim_prefix|>`` + the whole document before the cursor +
  ``<|fim_suffix|>`` + the whole document after it + ``<|fim_middle|>``,
  uncut when it fits the engine window (else a quarter of the room for the
  suffix), greedy; the first (non-empty) line for single-line tasks, the
  whole output for multi-line ones (``harness-nlines``: cut to the answer's
  line count, as published FIM evaluations do).
* ``raw``: the server's own request for the cursor (``build_context`` with the
  server's settings, then ``build_request``) sent to the engine and shown with
  no post-processing: the first line for single-line tasks.
* ``post-offline`` / ``post+comment``: our post-processing over that raw
  output, without / with the candidate filter ``strip_invented_comment``.
  The per-filter table runs the pipeline with and without each filter.
* ``--literal``: ``raw-literal`` / ``post-literal`` (multi only), the prompt
  split literally at the cursor on the blank line.
* ``--partial-every K``: partial mode on every k-th task. llama-cpp-python's chat
  endpoint does not continue a partial assistant turn, so the Qwen chat
  template is rendered by hand with the assistant turn left open.

Metrics per task: exact match (lines compared with trailing whitespace
stripped), edit similarity (difflib ratio of the completed region), harmful
(a suggestion was shown and it duplicates the next suffix line or the closers
right of the cursor, or it makes a Python file that parsed no longer parse, or
its indentation is wrong, where the correct answer would not do the same),
latency (client-observed for the LSP configurations). Intervals: Wilson 95 %
for shares, bootstrap 95 % for means and paired differences, and an exact
sign test on exact match for paired configurations.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import difflib
import glob
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import write_section
from qwen_lsp.context import CHARS_PER_TOKEN, CompletionContext, build_context
from qwen_lsp.documents import Document
from qwen_lsp.engine import post_context
from qwen_lsp.exclude import is_excluded
from qwen_lsp.postprocess import (
    PIPELINE,
    Filter,
    PostContext,
    postprocess,
    run_filters,
    stream_should_stop,
    strip_invented_comment,
    strip_prefix_echo,
    trim_trailing_whitespace,
)
from qwen_lsp.prompts import (
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
    SINGLE_LINE_MAX_TOKENS,
    build_request,
    fim_prompt,
    partial_messages,
)
from qwen_lsp.providers.base import QWEN_SPECIAL_TOKENS
from qwen_lsp.providers.local import LocalEngine
from qwen_lsp.settings import DEFAULT_EXCLUDE, Settings

SERVER_DEFAULTS = Settings()
MAX_TOKENS = SERVER_DEFAULTS.max_tokens
ENGINE_WINDOW = SERVER_DEFAULTS.context_size  # the local engine's n_ctx
# Engine threads for every engine this run starts (None: the server's default, all CPUs).
# On a shared, busy machine one thread avoids llama.cpp's spin-waits on a descheduled peer.
THREADS: dict[str, int | None] = {"n": None}
# Largest source file tasks are cut from (--max-file-chars): small files make the
# harness baseline cheap (and uncut) on a slow machine.
MAX_FILE_CHARS = {"py": 150_000, "js": 80_000}
SERVER_ENV: dict[str, str] = {}  # --server-env: settings for every server pass
STDLIB = Path(sysconfig.get_paths()["stdlib"])
NPM_DIRS = ("/usr/lib/node_modules/npm", "/usr/local/lib/node_modules/npm")
CROSS_PACKAGES = (
    "json", "email", "http", "importlib", "concurrent/futures", "xml/etree", "xml/dom",
    "logging", "asyncio", "unittest", "urllib", "multiprocessing", "sqlite3", "ctypes",
    "tomllib", "zoneinfo", "wsgiref", "dbm", "lib2to3", "idlelib", "email/mime",
    "xmlrpc", "html", "curses", "venv", "ensurepip", "pydoc_data", "collections",
)  # fmt: skip
MARK_START = "<!-- quality:start -->"
MARK_END = "<!-- quality:end -->"


# =========================================================================== tasks


@dataclass
class Task:
    id: str
    kind: str  # single | multi | cross
    lang: str  # python | javascript
    file: str  # real path of the source file
    doc: str  # document text given to the server (the answer removed)
    offset: int  # cursor
    line: int  # cursor line (0-based)
    col: int  # cursor column (code points)
    target: str  # the removed text, as it stands from the cursor
    region_end: int  # original text: end of the answer region
    region_start: int  # original text: start of the cursor line
    after: str  # original text after the answer region
    original_parses: bool = True
    sibling: str = ""  # cross: the module that defines the answer's name
    symbol: str = ""


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _py_files(rng: random.Random) -> list[Path]:
    files = sorted(p for p in STDLIB.glob("*.py")
                   if 4000 < p.stat().st_size < MAX_FILE_CHARS["py"])
    files = [p for p in files if not is_excluded(p, DEFAULT_EXCLUDE)]
    rng.shuffle(files)
    return files


def _js_files(rng: random.Random) -> list[Path]:
    base = next((Path(d) for d in NPM_DIRS if Path(d).is_dir()), None)
    if base is None:
        return []
    files = []
    for name in sorted(glob.glob(str(base / "**" / "*.js"), recursive=True)):
        p = Path(name)
        if ".min." in p.name or not 3000 < p.stat().st_size < MAX_FILE_CHARS["js"]:
            continue
        text = p.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        if not text.isascii() or max(len(x) for x in lines) > 160 or len(lines) < 80:
            continue
        files.append(p)
    rng.shuffle(files)
    return files


def _is_code_line(stripped: str, lang: str) -> bool:
    if not 12 <= len(stripped) <= 110:
        return False
    if stripped.startswith(("#", "//", "*", "/*", '"""', "'''", "@")):
        return False
    if lang == "javascript":
        return bool(re.search(r"[=(.]", stripped)) and stripped.endswith((";", "{", ")", ","))
    return True


def _split_points(line: str, rng: random.Random) -> int | None:
    """A cursor column inside ``line``: after a token boundary, >=3 chars left."""
    indent = len(line) - len(line.lstrip())
    cands = [
        i for i in range(indent + 3, len(line.rstrip()) - 2)
        if line[i - 1] in " (.=,[:" and not line[i].isspace()
    ]
    return rng.choice(cands) if cands else None


def _python_single_lines(text: str) -> list[int]:
    """0-based lines holding a whole one-line statement (no docstrings)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and node.end_lineno == node.lineno:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue
            out.add(node.lineno - 1)
    return sorted(out)


def _python_blocks(text: str) -> list[tuple[int, int, int]]:
    """(header line, first body line, last body line), 0-based, body of 2-8 lines."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    lines = _lines(text)
    out = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(node, ast.stmt) or not isinstance(body, list) or not body:
            continue
        first, last = body[0].lineno - 1, body[-1].end_lineno - 1
        header = first - 1
        if header < 0 or not 2 <= last - first + 1 <= 8:
            continue
        if not lines[header].rstrip().endswith(":"):
            continue
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            continue  # a docstring body: prose, not code
        if any(not ln.strip() for ln in lines[first : last + 1]):
            continue
        out.append((header, first, last))
    return sorted(set(out))


def _js_blocks(lines: list[str]) -> list[tuple[int, int, int]]:
    out = []
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("{") or line.strip().startswith(("//", "*")):
            continue
        indent = len(line) - len(line.lstrip())
        for j in range(i + 1, min(len(lines), i + 10)):
            cand = lines[j]
            if cand.strip() and len(cand) - len(cand.lstrip()) <= indent:
                if cand.strip().startswith("}") and len(cand) - len(cand.lstrip()) == indent:
                    body = lines[i + 1 : j]
                    if 2 <= len(body) <= 8 and all(b.strip() for b in body):
                        out.append((i, i + 1, j - 1))
                break
    return out


_PAIRS = {"(": ")", "[": "]", "{": "}"}


def _matching_close(line: str, open_at: int) -> int | None:
    """Index of the bracket closing ``line[open_at]`` on the same line (no strings parsed)."""
    want, depth = _PAIRS[line[open_at]], 0
    for i in range(open_at, len(line)):
        if line[i] == line[open_at]:
            depth += 1
        elif line[i] == want:
            depth -= 1
            if depth == 0:
                return i
    return None


def _single_task(path: Path, text: str, lang: str, ln: int, col: int, kind: str = "single",
                 tid: str = "") -> Task:
    """Delete the rest of the line; right after an opening bracket whose partner is on
    the line, keep that closer, as an editor with auto-pairing would have typed it."""
    lines = _lines(text)
    start = sum(len(x) + 1 for x in lines[:ln])
    line = lines[ln]
    kept = ""
    if line[col - 1] in _PAIRS and _matching_close(line, col - 1) is not None:
        kept = _PAIRS[line[col - 1]]
    doc = text[: start + col] + kept + text[start + len(line) :]
    return Task(
        id=tid or f"{kind}:{path.name}:{ln + 1}:{col}", kind=kind, lang=lang, file=str(path),
        doc=doc, offset=start + col, line=ln, col=col, target=line[col:].rstrip(),
        region_start=start, region_end=start + len(line), after=text[start + len(line) :],
    )


def _multi_task(path: Path, text: str, lang: str, header: int, first: int, last: int) -> Task:
    lines = _lines(text)
    start = sum(len(x) + 1 for x in lines[:first])
    end = sum(len(x) + 1 for x in lines[: last + 1]) - 1
    body_indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
    doc = text[:start] + body_indent + text[end:]
    return Task(
        id=f"multi:{path.name}:{first + 1}", kind="multi", lang=lang, file=str(path), doc=doc,
        offset=start + len(body_indent), line=first, col=len(body_indent),
        target=text[start + len(body_indent) : end], region_start=start, region_end=end,
        after=text[end:],
    )


def _line_candidates(text: str, lang: str) -> list[int]:
    """0-based lines that may go missing whole: one-line statements, block headers and,
    in JavaScript, every code line (closers such as ``}`` and ``} else {`` included)."""
    lines = _lines(text)
    if lang == "python":
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return []
        out = set(_python_single_lines(text))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            header = lines[node.lineno - 1] if isinstance(node, ast.stmt) else ""
            if isinstance(body, list) and body and header.rstrip().endswith(":"):
                out.add(node.lineno - 1)
    else:
        out = {i for i, ln in enumerate(lines)
               if ln.strip() and not ln.strip().startswith(("//", "*", "/*"))}
    return sorted(i for i in out if i > 20 and i + 1 < len(lines) and len(lines[i]) <= 110
                  and lines[i].strip() and not lines[i].strip().startswith(("#", "@")))


def _line_task(path: Path, text: str, lang: str, ln: int) -> Task:
    """The whole line is missing: the cursor sits on its now empty line, column 0."""
    lines = _lines(text)
    start = sum(len(x) + 1 for x in lines[:ln])
    line = lines[ln]
    return Task(
        id=f"line:{path.name}:{ln + 1}", kind="line", lang=lang, file=str(path),
        doc=text[:start] + text[start + len(line) :], offset=start, line=ln, col=0,
        target=line.rstrip(), region_start=start, region_end=start + len(line),
        after=text[start + len(line) :],
    )


def build_line_tasks(seed: int, n_line: int, per_file: int) -> list[Task]:
    """One missing line per task, Python and JavaScript alternating, clustered per file."""
    rng = random.Random(seed + 2)
    py, js = _py_files(rng), _js_files(rng)
    tasks: list[Task] = []
    turn = 0
    while len(tasks) < n_line and (py or js):
        pool = js if (turn % 2 and js) or not py else py
        lang = "javascript" if pool is js else "python"
        path = pool.pop(0)
        turn += 1
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.isascii():
            continue
        cands = _line_candidates(text, lang)
        if not cands:
            continue
        center = rng.choice(cands)
        near = [i for i in cands if abs(i - center) <= 40]
        rng.shuffle(near)
        k = min(per_file, n_line - len(tasks))
        lines = _lines(text)
        # JavaScript: a third of the picks are lines that start with a closer
        # ("}", "} else {", "});"), about their share of the code.
        closing = [i for i in near if lines[i].strip()[:1] in ")]}"]
        picked = closing[: k // 3] if lang == "javascript" else []
        picked += [i for i in near if i not in picked][: k - len(picked)]
        for ln in sorted(picked):
            tasks.append(_line_task(path, text, lang, ln))
    return tasks


def build_tasks(seed: int, n_single: int, n_multi: int, per_file: int) -> list[Task]:
    """Clusters of nearby tasks per file (nearby cursors share their prompt start)."""
    rng = random.Random(seed)
    py, js = _py_files(rng), _js_files(rng)
    sources = [(p, "python") for p in py]
    js_share = [(p, "javascript") for p in js]
    # Interleave: two Python files for each JS file.
    mixed: list[tuple[Path, str]] = []
    while sources or js_share:
        mixed.extend(sources[:2])
        sources = sources[2:]
        if js_share:
            mixed.append(js_share.pop(0))
    tasks: list[Task] = []
    singles = multis = 0
    for path, lang in mixed:
        if singles >= n_single and multis >= n_multi:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.isascii():
            continue
        lines = _lines(text)
        if lang == "python":
            single_lines = _python_single_lines(text)
            blocks = _python_blocks(text)
        else:
            single_lines = list(range(len(lines)))
            blocks = _js_blocks(lines)
        single_lines = [i for i in single_lines if i > 20 and _is_code_line(lines[i].strip(), lang)]
        blocks = [b for b in blocks if b[0] > 20]
        if not single_lines:
            continue
        center = rng.choice(single_lines)
        near = [i for i in single_lines if abs(i - center) <= 40]
        rng.shuffle(near)
        k_single = min(per_file, n_single - singles)
        for ln in sorted(near[:k_single]):
            col = _split_points(lines[ln], rng)
            if col is not None:
                tasks.append(_single_task(path, text, lang, ln, col))
                singles += 1
        near_blocks = sorted(blocks, key=lambda b: abs(b[1] - center))
        k_multi = min(max(1, per_file // 2), n_multi - multis)
        for header, first, last in sorted(near_blocks[:k_multi]):
            tasks.append(_multi_task(path, text, lang, header, first, last))
            multis += 1
    return tasks


def _top_level_names(text: str) -> set[str]:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return set()
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if len(n) >= 4}


def build_cross_tasks(seed: int, n_cross: int) -> list[Task]:
    """Cursor right before a use of a name imported from a sibling module."""
    rng = random.Random(seed + 1)
    cands: list[tuple[Path, Path, str, int, int]] = []
    for pkg in CROSS_PACKAGES:
        folder = STDLIB / pkg
        if not folder.is_dir():
            continue
        for mod in sorted(folder.glob("*.py")):
            text = mod.read_text(encoding="utf-8", errors="replace")
            if not text.isascii() or len(text) > 150_000:
                continue
            try:
                tree = ast.parse(text)
            except SyntaxError:
                continue
            imported: dict[str, Path] = {}
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom) or not node.module:
                    continue
                dotted = pkg.replace("/", ".") + "."
                if node.level == 0 and node.module.startswith(dotted):
                    sib = folder / (node.module[len(dotted):].replace(".", "/") + ".py")
                elif node.level == 1:
                    sib = folder / (node.module.replace(".", "/") + ".py")
                else:
                    continue
                if not sib.is_file() or sib == mod:
                    continue
                defined = _top_level_names(sib.read_text(encoding="utf-8", errors="replace"))
                for alias in node.names:
                    if alias.asname is None and alias.name in defined:
                        imported[alias.name] = sib
            if not imported:
                continue
            lines = _lines(text)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Name) and node.id in imported):
                    continue
                ln, col = node.lineno - 1, node.col_offset
                line = lines[ln]
                if col <= len(line) - len(line.lstrip()) or len(line) > 110:
                    continue
                if node.id in "\n".join(lines[max(0, ln - 80) : ln]) + line[:col]:
                    continue  # visible in the window: no cross-file knowledge needed
                cands.append((mod, imported[node.id], node.id, ln, col))
    cands = sorted(set(cands))
    rng.shuffle(cands)
    seen: set[tuple[Path, str]] = set()
    tasks = []
    for mod, sib, name, ln, col in cands:
        if len(tasks) >= n_cross or (mod, name) in seen:
            continue
        seen.add((mod, name))
        text = mod.read_text(encoding="utf-8")
        task = _single_task(mod, text, "python", ln, col, kind="cross",
                            tid=f"cross:{mod.parent.name}/{mod.name}:{ln + 1}:{name}")
        task.sibling, task.symbol = str(sib), name
        tasks.append(task)
    return tasks


# =========================================================================== scoring


@dataclass
class Outcome:
    shown: bool
    text: str  # completed region (cursor line start .. answer end) or ""
    em: bool
    es: float
    harmful: bool
    why: str = ""
    latency: float | None = None
    raw: str = ""
    cut: bool = False  # harness: the file did not fit the window


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def _dup_suffix(inserted: str, after: str) -> bool:
    following = [ln.strip() for ln in after.split("\n")[1:] if ln.strip()][:1]
    if not following:
        return False
    return any(ln.strip() == following[0] for ln in inserted.split("\n") if ln.strip())


def _bad_indent(region: str, task: Task) -> bool:
    """Multi-line: first code line indented differently, or a line left the block."""
    if task.kind != "multi":
        return False
    want = task.target.split("\n")[0]
    base = task.doc[task.region_start : task.offset]  # the cursor line's indentation
    got_lines = [ln for ln in region.split("\n") if ln.strip()]
    if not got_lines:
        return False
    first = got_lines[0]
    if len(first) - len(first.lstrip()) != len(base) + len(want) - len(want.lstrip()):
        return True
    return any(len(ln) - len(ln.lstrip()) < len(base) for ln in got_lines)


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True


def score(task: Task, inserted: str | None, replace: int = 0) -> Outcome:
    """Apply the suggestion at the cursor and compare the completed lines with the original.

    The completed region runs from the cursor line's start to where the
    unchanged rest of the file begins. Exact match compares it with the
    original lines (trailing whitespace stripped per line); edit similarity
    compares what follows the cursor in both. Nothing shown scores 0.
    """
    if not inserted or not inserted.strip():
        return Outcome(False, "", False, 0.0, False)
    new_doc = task.doc[: task.offset] + inserted + task.doc[task.offset + replace :]
    tail = task.doc[task.offset + replace :]
    truth = task.doc[task.region_start : task.offset] + task.target
    cut = len(new_doc) - len(task.after)
    region = new_doc[task.region_start : cut] if cut >= task.offset else ""
    lead = task.offset - task.region_start
    em = _norm(region) == _norm(truth)
    es = difflib.SequenceMatcher(None, _norm(region[lead:]), _norm(truth[lead:])).ratio()
    why = []
    if _dup_suffix(inserted, tail) and not _dup_suffix(task.target, tail):
        why.append("dup")
    rest = tail.split("\n", 1)[0].strip()
    if rest and inserted.split("\n", 1)[0].rstrip().endswith(rest):
        why.append("dup")  # retypes the closer(s) right of the cursor
    if task.lang == "python" and task.original_parses and not _parses(new_doc):
        why.append("parse")
    if _bad_indent(region, task) and not _bad_indent(truth, task):
        why.append("indent")
    return Outcome(True, region, em, es, bool(why), ",".join(sorted(set(why))))


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


# =========================================================================== stats


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def bootstrap(values: list[float], reps: int = 2000, seed: int = 7) -> tuple[float, float]:
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    return (means[int(0.025 * reps)], means[int(0.975 * reps) - 1])


# =========================================================================== LSP runs


def _server_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QWEN_LSP_") and k not in ("DASHSCOPE_API_KEY",)}
    env["XDG_CONFIG_HOME"] = str(tmp / "config")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if THREADS["n"]:
        env["QWEN_LSP_THREADS"] = str(THREADS["n"])
    env.update(SERVER_ENV)
    env.update(extra)
    return env


async def _start(env: dict[str, str], root: Path | None) -> tuple[LanguageClient, str]:
    config = ClientServerConfig(server_command=[sys.executable, "-m", "qwen_lsp"],
                                server_env=env)
    client = await config.start()
    assert isinstance(client, LanguageClient)
    result = await client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("neovim@v0.11.0"),
        client_info=types.ClientInfo(name="quality-bench"),
        root_uri=root.as_uri() if root else None,
    ))
    enc = result.capabilities.position_encoding or types.PositionEncodingKind.Utf16
    name = str(getattr(enc, "value", enc))
    return client, {"utf-8": "utf-8", "utf-32": "utf-32"}.get(name, "utf-16")


def _open(client: LanguageClient, uri: str, text: str, version: int = 1) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=_lang_id(uri), version=version,
                                             text=text)))


def _close(client: LanguageClient, uri: str) -> None:
    client.text_document_did_close(types.DidCloseTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri=uri)))


def _lang_id(uri: str) -> str:
    return "python" if uri.endswith(".py") else "javascript"


async def _ask(client: LanguageClient, uri: str, line: int, char: int) -> Any:
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=char),
        context=types.InlineCompletionContext(
            trigger_kind=types.InlineCompletionTriggerKind.Invoked)))


SETTLE_S = 6.0


def _inserted(result: Any, doc: Document, task: Task, encoding: str) -> tuple[str | None, int]:
    """Text and replaced-character count of the first inline item (None: nothing)."""
    if not result or not result.items:
        return None, 0
    item = result.items[0]
    text = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
    replace = 0
    if item.range is not None:
        end = doc.offset_at(item.range.end.line, item.range.end.character, encoding,
                            strict=False)
        replace = max(0, end - task.offset)
    return text, replace


async def run_lsp(tasks: list[Task], *, cross_file: bool, root: Path | None,
                  context_tokens: int | None, log: Any,
                  settled: dict[str, Outcome] | None = None,
                  env_extra: dict[str, str] | None = None, pause_s: float = 0.0,
                  label: str = "lsp") -> dict[str, Outcome]:
    """One server process; every task opened, asked once (manual trigger), closed.

    ``pause_s``: the cursor settles at the task's place (``qwen/cursor``, as the
    editor plugins send it) that long before the request: a user who reads
    before typing, which gives the engine's warm-up its time.
    """
    out: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory() as tmp:
        budget = {"QWEN_LSP_CONTEXT_TOKENS": str(context_tokens)} if context_tokens else {}
        budget.update(env_extra or {})
        # Defaults everywhere but the time box: a busy shared machine must not turn
        # slow answers into empty ones (quality is measured here, latency elsewhere).
        env = _server_env(Path(tmp), QWEN_LSP_PROVIDER="local",
                          QWEN_LSP_CROSS_FILE="true" if cross_file else "false",
                          QWEN_LSP_TIMEOUT_MS="90000", **budget)
        client, encoding = await _start(env, root)
        try:
            warm = "file:///tmp/qwen-bench-warmup.py"
            _open(client, warm, "def add(a, b):\n    return \n")
            await _ask(client, warm, 1, 11)
            _close(client, warm)
            for i, task in enumerate(tasks):
                uri = Path(task.file).as_uri()
                sib_uri = Path(task.sibling).as_uri() if task.sibling and cross_file else ""
                if sib_uri:
                    _open(client, sib_uri, Path(task.sibling).read_text(encoding="utf-8"))
                _open(client, uri, task.doc)
                doc = Document(uri=uri, text=task.doc)
                line, char = doc.position_at(task.offset, encoding)
                if pause_s > 0:
                    client.protocol.notify("qwen/cursor", {
                        "textDocument": {"uri": uri},
                        "position": {"line": line, "character": char}})
                    await asyncio.sleep(pause_s)
                t0 = time.perf_counter()
                result = await _ask(client, uri, line, char)
                latency = time.perf_counter() - t0
                o = score(task, *_inserted(result, doc, task, encoding))
                o.latency = latency
                out[task.id] = o
                if settled is not None and task.kind == "multi":
                    # The engine answers a multi-line flight with the lines it has
                    # after a short time and keeps streaming into the cache; ask
                    # again once the stream is done to see the whole block.
                    await asyncio.sleep(SETTLE_S)
                    again = await _ask(client, uri, line, char)
                    settled[task.id] = score(task, *_inserted(again, doc, task, encoding))
                _close(client, uri)
                if sib_uri:
                    _close(client, sib_uri)
                log(f"  {label}{'+x' if cross_file else ''} {i + 1}/{len(tasks)} {task.id} "
                    f"{latency:.1f}s em={int(o.em)} es={o.es:.2f} {o.why}")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.shutdown_session(), 10)
            await client.stop()
    return out


# =========================================================================== engine runs


def chat_template(messages: list[dict[str, Any]]) -> str:
    """Qwen's ChatML with the last (assistant) turn left open: partial mode by hand."""
    parts = []
    for msg in messages[:-1]:
        parts.append(f"<|im_start|>{msg['role']}\n{msg['content']}<|im_end|>\n")
    parts.append(f"<|im_start|>assistant\n{messages[-1]['content']}")
    return "".join(parts)


def task_context(task: Task, context_tokens: int | None, *, blank_layout: bool = True,
                 path: str | None = None) -> CompletionContext:
    """The context the server builds for this task (same settings as ``server.py``)."""
    uri = Path(task.file).as_uri()
    return build_context(task.doc, task.offset, uri=uri, path=path or Path(task.file).name,
                         language=task.lang, version=1,
                         context_tokens=context_tokens or SERVER_DEFAULTS.context_tokens,
                         manual=True, blank_line_layout=blank_layout,
                         max_output_tokens=MAX_TOKENS, context_window=ENGINE_WINDOW)


def harness_prompt(task: Task, max_tokens: int) -> tuple[str, bool]:
    """The model's published FIM layout: the whole code before and after the cursor.

    Uncut when it fits the engine's window (with room for the answer); otherwise the
    suffix keeps at most a quarter of the room (Qwen's own eval keeps 2,048 of 8,192)
    and the prefix the rest, both cut at line boundaries. Returns (prompt, was cut).
    """
    before, after = task.doc[: task.offset], task.doc[task.offset :]
    room = int((ENGINE_WINDOW - max_tokens - 16) * CHARS_PER_TOKEN)
    cut = len(before) + len(after) > room
    if cut:
        keep_after = min(len(after), room // 4)
        keep_before = room - keep_after
        if len(before) < keep_before:
            keep_after = min(len(after), room - len(before))
        tail = after[:keep_after]
        after = tail[: tail.rfind("\n") + 1] if "\n" in tail else tail
        head = before[len(before) - min(len(before), room - len(after)) :]
        if len(head) < len(before) and "\n" in head:
            head = head[head.index("\n") + 1 :]
        before = head
    return f"{FIM_PREFIX}{before}{FIM_SUFFIX}{after}{FIM_MIDDLE}", cut


class Raw:
    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.client = httpx.AsyncClient(timeout=300, headers={"Authorization": f"Bearer {key}"},
                                        trust_env=False)

    async def complete(self, prompt: str, max_tokens: int, stop: list[str],
                       until: Callable[[str], bool] | None = None) -> tuple[str, float]:
        """Greedy completion; ``until`` closes the stream as soon as it says the text
        so far is enough (the server's own stream check, or "one line is there")."""
        t0 = time.perf_counter()
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stop": stop}
        if until is None:
            r = await self.client.post(self.base + "/completions", json=body)
            r.raise_for_status()
            return r.json()["choices"][0]["text"], time.perf_counter() - t0
        text = ""
        async with self.client.stream("POST", self.base + "/completions",
                                      json={**body, "stream": True}) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                text += json.loads(line[6:])["choices"][0].get("text") or ""
                if until(text):
                    break
        return text, time.perf_counter() - t0

    async def chat_probe(self) -> str:
        """Does /v1/chat/completions continue a partial assistant message?"""
        r = await self.client.post(self.base + "/chat/completions", json={
            "messages": [
                {"role": "user", "content": "Write a Python function that adds two numbers."},
                {"role": "assistant", "content": "def add(a, b):\n    return a", "partial": True},
            ], "max_tokens": 24, "temperature": 0.0})
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]


def _fit_blank(text: str, task: Task) -> str:
    """For the blank-line layout the raw model writes "\\n" + the line: drop that newline
    and the indentation the cursor already has (the least any client must do)."""
    if text.startswith("\n") and not task.doc[task.region_start : task.offset].strip():
        text = text[1:]
        indent = task.doc[task.region_start : task.offset]
        text = text.removeprefix(indent)
    return text


def _first_nonblank(text: str) -> str:
    return next((line for line in text.split("\n") if line.strip()), "")


def _has_line(text: str) -> bool:
    """A non-empty line is complete (enough for a single-line answer)."""
    return any(line.strip() for line in text.split("\n")[:-1])


def raw_answer(task: Task, text: str) -> str:
    """The model's text as a client that does no post-processing would insert it:
    the first line for single-line tasks (after the newline the blank-line layout
    asks for), the whole text for multi-line ones."""
    if task.kind == "multi":
        return _fit_blank(text, task)
    if task.kind == "line":
        return first_line(_fit_blank(text, task))
    return first_line(text)


def harness_answer(task: Task, text: str, *, n_lines: bool = False) -> str:
    """The harness baseline's answer: the first non-empty line for single-line tasks;
    for multi-line ones the whole text, or (``n_lines``) as many lines as the answer
    has, which is what published FIM evaluations do (they know the answer's length)."""
    if task.kind != "multi":
        return _first_nonblank(text) if task.kind == "line" else first_line(text)
    if n_lines:
        return "\n".join(text.split("\n")[: task.target.count("\n") + 1])
    return text


def _with_comment_filter() -> tuple[Filter, ...]:
    """PIPELINE with strip_invented_comment, or without it when it is already there."""
    if strip_invented_comment in PIPELINE:
        return tuple(f for f in PIPELINE if f is not strip_invented_comment)
    at = PIPELINE.index(trim_trailing_whitespace)
    return (*PIPELINE[:at], strip_invented_comment, *PIPELINE[at:])


COMMENT_VARIANT = "post+comment" if strip_invented_comment not in PIPELINE else "post-comment"


def _post(task: Task, text: str, ctx: CompletionContext,
          filters: tuple[Filter, ...] = PIPELINE) -> Outcome:
    sug = run_filters(text, post_context(ctx), filters)
    return score(task, sug.text if sug else None, sug.replace_suffix_chars if sug else 0)


def offline_variants(task: Task, ctx: CompletionContext, text: str) -> dict[str, Outcome]:
    """Post-processing of one raw model output, with and without the comment filter."""
    return {"post-offline": _post(task, text, ctx),
            COMMENT_VARIANT: _post(task, text, ctx, _with_comment_filter())}


async def run_engine(tasks: list[Task], *, context_tokens: int | None, partial_every: int,
                     log: Any, literal: bool = False, harness: bool = True,
                     ) -> tuple[dict[str, dict[str, Outcome]], str]:
    """Engine-only configurations, one pass per prompt layout (nearby tasks of one file
    then share their prompt start in llama.cpp's cache, as they do in an editor)."""
    engine = LocalEngine(threads=THREADS["n"], context_size=ENGINE_WINDOW)
    base, key = await engine.ensure_started()
    raw = Raw(base, key)
    res: dict[str, dict[str, Outcome]] = {t.id: {} for t in tasks}
    specials = list(QWEN_SPECIAL_TOKENS)
    try:
        probe = await raw.chat_probe()
        for i, task in enumerate(tasks):
            # The very request the server sends for this cursor, without post-processing.
            ctx = task_context(task, context_tokens)
            req = build_request(ctx, mode="fim", max_tokens=MAX_TOKENS, temperature=0.0)
            pctx = post_context(ctx)
            text, lat = await raw.complete(req.prompt or "", req.max_tokens, req.stop,
                                           until=lambda t, c=pctx: stream_should_stop(t, c))
            r = res[task.id]
            r["raw"] = score(task, raw_answer(task, text))
            r["raw"].latency, r["raw"].raw = lat, text
            r.update(offline_variants(task, ctx, text))
            if literal and task.kind == "multi":
                lctx = task_context(task, context_tokens, blank_layout=False)
                ltext, llat = await raw.complete(fim_prompt(lctx), MAX_TOKENS, specials)
                r["raw-literal"] = score(task, ltext)
                r["raw-literal"].latency = llat
                lsug = postprocess(ltext, post_context(lctx))
                r["post-literal"] = score(task, lsug.text if lsug else None,
                                          lsug.replace_suffix_chars if lsug else 0)
            log(f"  raw {i + 1}/{len(tasks)} {task.id} {lat:.1f}s em={int(r['raw'].em)} "
                f"post-em={int(r['post-offline'].em)}")
        if harness:
            for i, task in enumerate(tasks):
                limit = MAX_TOKENS if task.kind == "multi" else SINGLE_LINE_MAX_TOKENS
                prompt, was_cut = harness_prompt(task, limit)
                stop = [*specials, "\n"] if task.kind in ("single", "cross") else specials
                one_line = None if task.kind == "multi" else _has_line
                text, lat = await raw.complete(prompt, limit, stop, until=one_line)
                r = res[task.id]
                r["harness"] = score(task, harness_answer(task, text))
                r["harness"].latency, r["harness"].raw = lat, text
                r["harness"].cut = was_cut
                if task.kind == "multi":
                    r["harness-nlines"] = score(task, harness_answer(task, text, n_lines=True))
                log(f"  harness {i + 1}/{len(tasks)} {task.id} {lat:.1f}s "
                    f"em={int(r['harness'].em)}{' (cut)' if was_cut else ''}")
        if partial_every:
            chosen = [t for i, t in enumerate(tasks) if i % partial_every == 0]
            for i, task in enumerate(chosen):
                ctx = task_context(task, context_tokens)
                prompt = chat_template(partial_messages(ctx))
                limit = MAX_TOKENS if ctx.multiline else SINGLE_LINE_MAX_TOKENS
                text, lat = await raw.complete(prompt, limit, ["<|im_end|>", *specials])
                sug = postprocess(text, post_context(ctx), echo_prefix=True)
                o = score(task, sug.text if sug else None,
                          sug.replace_suffix_chars if sug else 0)
                o.latency, o.raw = lat, text
                res[task.id]["partial"] = o
                if task.kind != "multi":
                    res[task.id]["partial-raw"] = score(task, first_line(text))
                log(f"  partial {i + 1}/{len(chosen)} {task.id} {lat:.1f}s em={int(o.em)}")
    finally:
        await raw.client.aclose()
        await engine.stop()
    return res, probe


# =========================================================================== filters


def _emptied_by(text: str, ctx: PostContext, filters: tuple[Filter, ...]) -> str | None:
    """Name of the filter that left nothing of ``text`` (None: something was shown)."""
    replace = 0
    for step in filters:
        if step is strip_prefix_echo:
            continue
        out = step(text, ctx)
        text, replace = (out.text, out.replace_suffix_chars) if hasattr(out, "text") else (
            out, replace)
        if not text:
            return step.__name__
    if not text.strip() or text == ctx.line_suffix[:replace]:
        return "no-op"
    return None


@dataclass
class FilterRow:
    kind: str
    name: str
    changed: int = 0  # tasks whose final answer differs without this filter
    removed_right: int = 0  # right without it, wrong (or nothing) with it
    fixed_wrong: int = 0  # wrong without it, right with it
    dropped_right: int = 0  # it left nothing where the answer without it was right
    dropped_wrong: int = 0  # it left nothing where the answer without it was wrong
    harm_prevented: int = 0  # harmful without it, not harmful with it
    harm_caused: int = 0


def filter_table(tasks: list[Task], eng: dict[str, dict[str, Outcome]],
                 context_tokens: int | None) -> list[FilterRow]:
    """Each filter's wins and losses: the pipeline with and without it, over the raw
    outputs of the server's own prompt (offline: no streaming early stop)."""
    rows: dict[tuple[str, str], FilterRow] = {}
    candidates = [f for f in _with_comment_filter() if f not in PIPELINE]
    for task in tasks:
        r = eng.get(task.id, {})
        if "raw" not in r:
            continue
        ctx = task_context(task, context_tokens)
        pctx = post_context(ctx)
        text = r["raw"].raw
        full = _post(task, text, ctx)
        for f in (*[f for f in PIPELINE if f is not strip_prefix_echo], *candidates):
            if f in PIPELINE:
                with_f, without = full, _post(task, text, ctx,
                                              tuple(g for g in PIPELINE if g is not f))
                chain = PIPELINE
            else:
                at = PIPELINE.index(trim_trailing_whitespace)
                chain = (*PIPELINE[:at], f, *PIPELINE[at:])
                with_f, without = _post(task, text, ctx, chain), full
            name = f.__name__ + ("" if f in PIPELINE else " (candidate)")
            row = rows.setdefault((task.kind, name), FilterRow(task.kind, name))
            row.changed += with_f.text != without.text
            row.removed_right += without.em and not with_f.em
            row.fixed_wrong += with_f.em and not without.em
            row.harm_prevented += without.harmful and not with_f.harmful
            row.harm_caused += with_f.harmful and not without.harmful
            if _emptied_by(text, pctx, chain) == f.__name__ and without.shown:
                if without.em:
                    row.dropped_right += 1
                else:
                    row.dropped_wrong += 1
    return list(rows.values())


def render_filters(rows: list[FilterRow]) -> list[str]:
    out = [("Per filter: the pipeline with and without it over the raw outputs of the "
           "server's prompt (tasks where the final answer differs; right/wrong by exact "
           "match; dropped = this filter left nothing to show):"), "",
           ("| tasks | filter | changed | removed a right answer | fixed a wrong one | "
           "dropped right / wrong | harmful prevented / caused |"),
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if not (r.changed or r.dropped_right or r.dropped_wrong):
            continue
        out.append(f"| {r.kind} | {r.name} | {r.changed} | {r.removed_right} | "
                   f"{r.fixed_wrong} | {r.dropped_right} / {r.dropped_wrong} | "
                   f"{r.harm_prevented} / {r.harm_caused} |")
    return out


# =========================================================================== report


@dataclass
class Row:
    config: str
    kind: str
    n: int
    shown: float
    em: float
    em_ci: tuple[float, float]
    es: float
    es_ci: tuple[float, float]
    harmful: float
    harmful_ci: tuple[float, float]
    lat_p50: float | None = None
    lat_p90: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(config: str, kind: str, outs: list[Outcome]) -> Row:
    n = len(outs)
    em = sum(o.em for o in outs)
    harm = sum(o.harmful for o in outs)
    es = [o.es for o in outs]
    lats = sorted(o.latency for o in outs if o.latency is not None)
    return Row(
        config, kind, n, sum(o.shown for o in outs) / max(n, 1), em / max(n, 1), wilson(em, n),
        statistics.fmean(es) if es else 0.0, bootstrap(es), harm / max(n, 1), wilson(harm, n),
        lats[len(lats) // 2] if lats else None,
        lats[min(len(lats) - 1, int(0.9 * len(lats)))] if lats else None,
    )


def paired(a: list[Outcome], b: list[Outcome], attr: str) -> tuple[float, tuple[float, float]]:
    diffs = [float(getattr(x, attr)) - float(getattr(y, attr)) for x, y in zip(a, b, strict=True)]
    return (statistics.fmean(diffs) if diffs else 0.0), bootstrap(diffs)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(ci: tuple[float, float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def sign_test(a: list[Outcome], b: list[Outcome]) -> tuple[int, int, float]:
    """Exact two-sided sign test on exact match: (a right only, b right only, p)."""
    wins = sum(x.em and not y.em for x, y in zip(a, b, strict=True))
    losses = sum(y.em and not x.em for x, y in zip(a, b, strict=True))
    n = wins + losses
    if n == 0:
        return wins, losses, 1.0
    k = min(wins, losses)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return wins, losses, min(1.0, 2 * p)


KINDS = ("line", "single", "multi", "cross")
ENGINE_CONFIGS = ("lsp-settled", "raw", "post-offline", "post+comment", "post-comment",
                  "harness", "harness-nlines", "raw-literal", "post-literal")
VS_HARNESS = ("lsp", "lsp-settled", "post-offline", "post+comment", "post-comment", "raw")


def report(tasks: list[Task], lsp: dict[str, Outcome], lspx: dict[str, Outcome],
           eng: dict[str, dict[str, Outcome]], meta: dict[str, Any],
           extra_lsp: dict[str, dict[str, Outcome]] | None = None) -> str:
    rows: list[Row] = []
    diffs: list[str] = []
    for kind in KINDS:
        ts = [t for t in tasks if t.kind == kind]
        if not ts:
            continue
        configs: dict[str, list[Outcome]] = {"lsp": [lsp[t.id] for t in ts]}
        for label, outs in (extra_lsp or {}).items():
            if all(t.id in outs for t in ts):
                configs[label] = [outs[t.id] for t in ts]
        if kind == "cross" and lspx:
            configs["lsp+xfile"] = [lspx[t.id] for t in ts]
        for name in ENGINE_CONFIGS:
            if all(name in eng[t.id] for t in ts):
                configs[name] = [eng[t.id][name] for t in ts]
        for name, outs in configs.items():
            rows.append(summarize(name, kind, outs))
        part = [t for t in ts if "partial" in eng[t.id]]
        if part:
            rows.append(summarize("partial", kind + f" (subset {len(part)})",
                                  [eng[t.id]["partial"] for t in part]))
            rows.append(summarize("lsp", kind + f" (same subset {len(part)})",
                                  [lsp[t.id] for t in part]))
        pairs: list[tuple[str, str]] = []
        if "harness" in configs:
            pairs += [(name, "harness") for name in (*VS_HARNESS, *(extra_lsp or {}))
                      if name in configs]
        # The default (adaptive) server against each other server pass on the
        # same tasks: fixed budgets, a paused user.
        pairs += [("lsp", name) for name in (extra_lsp or {}) if name in configs]
        pairs += [("lsp", "raw"), ("post-offline", "raw")]
        if "lsp+xfile" in configs:
            pairs.append(("lsp+xfile", "lsp"))
        if "raw-literal" in configs:
            pairs.append(("post-offline", "post-literal"))
        for left, right in pairs:
            if left not in configs or right not in configs:
                continue
            a_outs, b_outs = configs[left], configs[right]
            wins, losses, p = sign_test(a_outs, b_outs)
            cells = []
            for attr in ("em", "es", "harmful"):
                d, ci = paired(a_outs, b_outs, attr)
                cells.append(f"{100 * d:+.1f} {_ci(ci)}")
            diffs.append(f"| {kind} | {left} − {right} | {' | '.join(cells)} | "
                         f"{wins} / {losses}, p = {p:.3f} |")
    cut = sum(eng[t.id]["harness"].cut for t in tasks if "harness" in eng[t.id])
    ctoks = (f"contextTokens {meta['context_tokens']} (set by --context-tokens)"
             if meta["context_tokens"] else
             f"contextTokens {SERVER_DEFAULTS.context_tokens} (the server's default)")
    lines = [
        (f"Run: `{meta['command']}` — {meta['date']}, {meta['machine']}, model "
         f"{meta['model']}, {ctoks}, other settings at their defaults: maxTokens "
         f"{MAX_TOKENS} (single-line {SINGLE_LINE_MAX_TOKENS}), engine window "
         f"{ENGINE_WINDOW}, greedy, engine threads {meta.get('threads') or 'all CPUs'}; "
         f"wall time {meta['wall_min']:.1f} min."
         + (f" Server settings: {meta['server_env']}." if meta.get("server_env") else "")),
        "",
        (f"Tasks: {meta['counts']} (seed {meta['seed']}); harness prompts cut to fit the "
         f"window: {cut}."),
        "",
        ("| config | tasks | n | shown % | exact match % [95% CI] | edit sim. % [95% CI] | "
         "harmful % [95% CI] | latency p50 / p90 s |"),
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lat = "" if r.lat_p50 is None else f"{r.lat_p50:.2f} / {r.lat_p90:.2f}"
        lines.append(
            f"| {r.config} | {r.kind} | {r.n} | {_pct(r.shown)} | {_pct(r.em)} {_ci(r.em_ci)} | "
            f"{_pct(r.es)} {_ci(r.es_ci)} | {_pct(r.harmful)} {_ci(r.harmful_ci)} | {lat} |")
    lines += ["", ("Paired differences (percentage points, bootstrap 95% CI; last column: "
                   "tasks only the left / only the right config gets exactly right, exact "
                   "two-sided sign test):"), "",
              "| tasks | comparison | Δ exact match | Δ edit sim. | Δ harmful | sign test |",
              "| --- | --- | --- | --- | --- | --- |", *diffs]
    if meta.get("filters"):
        lines += ["", *render_filters([FilterRow(**r) for r in meta["filters"]])]
    return "\n".join(lines)


PREAMBLE = """\
### Completion quality (`bench/quality.py`)

Token estimate (`qwen_lsp/context.py`), checked against the real Qwen2.5
tokenizer with `python bench/quality.py --calibrate` (it loads the GGUF
vocabulary with `llama_cpp.Llama(vocab_only=True)`). Windows are cut in
characters, `CHARS_PER_TOKEN = 3.8`: Python stdlib 4.17 characters per token
(546,150 chars, 130,858 tokens, 40 modules), JavaScript from npm 3.84. What a
window costs is counted by `estimate_tokens`, which splits text as Qwen2's
pre-tokenizer does: over 153 random windows of 0.8-2 kB (2026-12-07) it counts
1.12 times the real tokens at the median (5th-95th percentile 1.02-1.23,
extremes 0.56 for base64 in a bundled WebAssembly module and 1.34), where
characters / 3.8 gave 1.08 (0.56-1.37, extremes 0.40-1.47).

Method: see the docstring of `bench/quality.py`. Task kinds: `line` = one whole
line is missing and the cursor sits at column 0 of its empty line (Python from
the standard library, JavaScript from npm, closers such as `}` and `} else {`
included); `single` = the rest of a line after a mid-line cursor; `multi` = a
block body of 2-8 lines; `cross` = a mid-line cursor before a name defined in a
sibling module. Configurations: `lsp` is the product end to end (stdio server,
provider local, manual trigger, the server's default settings); `harness` is the
model called directly with its published FIM layout: `<|fim_prefix|>` + the whole
code before the cursor + `<|fim_suffix|>` + the whole code after it +
`<|fim_middle|>`, uncut when it fits the engine window, greedy, first
(non-empty) line for single-line tasks, the whole output for multi-line ones
(`harness-nlines`: cut to the answer's line count, as published evaluations
do, which needs the answer); `raw` is the request `build_context` +
`build_request` make at the configured contextTokens (same layout, stop and
token limits; generation stopped where the server's stream check stops it),
shown without post-processing. Since commit a558afa the server itself gives
the local engine a smaller window when the engine is slow (about a second of
prompt processing), so on a busy machine `lsp` may see less code than `raw`;
`post-offline` is our post-processing over the raw output;
`post+comment` adds the candidate filter that drops a comment the model put
after the code of a line. `lsp-settled` asks again at the same place 6 s later
(multi-line tasks: the engine answers with the complete lines it has after
0.25 s and keeps streaming into its cache). Harmful = a shown suggestion that
duplicates the next line or the closers right of the cursor, or breaks a Python
file that parsed, or has the wrong indentation.
"""


def write_md(section: str) -> None:
    write_section(ROOT / "BENCHMARKS.md", MARK_START, MARK_END,
                  f"{MARK_START}\n{PREAMBLE}\n{section}\n{MARK_END}")


def load_results(path: Path) -> tuple[list[Task], dict[str, Outcome], dict[str, Outcome],
                                      dict[str, dict[str, Outcome]], dict[str, Any],
                                      dict[str, dict[str, Outcome]]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    tasks = [Task(**{**t, "doc": "", "after": ""}) for t in data["tasks"]]

    def outs(d: dict[str, Any]) -> dict[str, Outcome]:
        return {k: Outcome(**v) for k, v in d.items()}

    eng = {k: outs(v) for k, v in data["engine"].items()}
    extra = {k: outs(v) for k, v in data.get("lsp_extra", {}).items()}
    return tasks, outs(data["lsp"]), outs(data["lsp_xfile"]), eng, data["meta"], extra


def all_tasks(seed: int, counts: dict[str, int], per_file: int) -> list[Task]:
    tasks = build_line_tasks(seed, counts.get("line", 0), per_file)
    tasks += build_tasks(seed, counts.get("single", 0), counts.get("multi", 0), per_file)
    tasks += build_cross_tasks(seed, counts.get("cross", 0))
    return tasks


def rescore(tasks: list[Task], eng: dict[str, dict[str, Outcome]], meta: dict[str, Any],
            *, per_file: int) -> None:
    """Post-process the saved raw outputs again with the current code (no model calls)."""
    by_id = {t.id: t for t in all_tasks(meta["seed"], meta["counts"], per_file)}
    ctoks = meta["context_tokens"]
    for i, old in enumerate(tasks):
        task = by_id[old.id]
        tasks[i] = task
        r = eng[task.id]
        ctx = task_context(task, ctoks)
        r.update(offline_variants(task, ctx, r["raw"].raw))
        if "harness" in r:
            cut, latency, raw = r["harness"].cut, r["harness"].latency, r["harness"].raw
            r["harness"] = score(task, harness_answer(task, raw))
            r["harness"].cut, r["harness"].latency, r["harness"].raw = cut, latency, raw
            if task.kind == "multi":
                r["harness-nlines"] = score(task, harness_answer(task, raw, n_lines=True))
        if "partial" in r:
            psug = postprocess(r["partial"].raw, post_context(ctx), echo_prefix=True)
            latency, raw = r["partial"].latency, r["partial"].raw
            r["partial"] = score(task, psug.text if psug else None,
                                 psug.replace_suffix_chars if psug else 0)
            r["partial"].latency, r["partial"].raw = latency, raw
        if "raw-literal" in r:
            lead = task.offset - task.region_start
            ltext = r["raw-literal"].text[lead:] if r["raw-literal"].shown else ""
            lctx = task_context(task, ctoks, blank_layout=False)
            lsug = postprocess(ltext, post_context(lctx))
            r["post-literal"] = score(task, lsug.text if lsug else None,
                                      lsug.replace_suffix_chars if lsug else 0)
    meta["filters"] = [asdict(r) for r in filter_table(tasks, eng, ctoks)]


def calibrate(samples: int = 40, seed: int = 0) -> None:
    """The token estimate against the real Qwen tokenizer on stdlib Python and npm JS.

    Characters per token over the files' first 20 kB (CHARS_PER_TOKEN, which
    cuts windows), then ``estimate_tokens`` / real tokens over windows of 0.8-2 kB
    taken at random (three a file): median, 5th and 95th percentile, extremes,
    beside characters / CHARS_PER_TOKEN for the same windows.
    """
    import llama_cpp  # the local engine's dependency

    from qwen_lsp.context import CHARS_PER_TOKEN, estimate_tokens
    from qwen_lsp.providers.local_model import MODEL_FILENAME, model_cache_dir

    model = llama_cpp.Llama(model_path=str(model_cache_dir() / MODEL_FILENAME),
                            vocab_only=True, verbose=False)

    def real(text: str) -> int:
        return len(model.tokenize(text.encode(), add_bos=False, special=False))

    rng = random.Random(seed)
    py = sorted(glob.glob(str(STDLIB / "*.py")))
    base = next((d for d in NPM_DIRS if Path(d).is_dir()), NPM_DIRS[0])
    js = sorted(glob.glob(f"{base}/node_modules/**/*.js", recursive=True))
    windows: list[tuple[str, int]] = []
    for name, files in (("python", py), ("javascript", js)):
        chars = tokens = 0
        for f in rng.sample(files, min(samples, len(files))):
            text = Path(f).read_text(encoding="utf-8", errors="replace")[:20000]
            chars += len(text)
            tokens += real(text)
            for _ in range(3 if len(text) > 3000 else 0):
                at = rng.randrange(0, len(text) - 2000)
                window = text[at:at + rng.choice((800, 1500, 2000))]
                windows.append((window, real(window)))
        print(f"{name}: {chars} chars, {tokens} tokens, {chars / max(tokens, 1):.2f} chars/token")
    for label, count in (("estimate_tokens", estimate_tokens),
                         (f"chars / {CHARS_PER_TOKEN}", lambda t: len(t) / CHARS_PER_TOKEN)):
        ratios = sorted(count(w) / n for w, n in windows if n)
        k = len(ratios) // 20
        print(f"{label} / real tokens over {len(ratios)} windows: median "
              f"{statistics.median(ratios):.2f}, 5th-95th percentile {ratios[k]:.2f}-"
              f"{ratios[-1 - k]:.2f}, extremes {ratios[0]:.2f}-{ratios[-1]:.2f}")


def parse_lsp_run(spec: str) -> tuple[str, dict[str, str], float]:
    """``NAME:budget=N,pause=S`` -> (name, server environment, pause in seconds)."""
    name, _, rest = spec.partition(":")
    env: dict[str, str] = {}
    pause = 0.0
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        if key == "budget":
            env.update(QWEN_LSP_ADAPTIVE_BUDGET="false", QWEN_LSP_CONTEXT_TOKENS=str(int(value)))
        elif key == "pause":
            pause = float(value)
        else:
            raise SystemExit(f"--lsp-run {spec!r}: unknown part {key!r} (budget=N, pause=S)")
    return name or "lsp-extra", env, pause


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few-minute run (small sample)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--line", type=int, default=40, help="whole-line tasks")
    ap.add_argument("--single", type=int, default=30)
    ap.add_argument("--multi", type=int, default=12)
    ap.add_argument("--cross", type=int, default=0)
    ap.add_argument("--per-file", type=int, default=6)
    ap.add_argument("--partial-every", type=int, default=0,
                    help="partial mode on every k-th task (0: never)")
    ap.add_argument("--literal", action="store_true",
                    help="also the literal split at blank lines (multi-line tasks)")
    ap.add_argument("--context-tokens", type=int, default=None,
                    help="the server's contextTokens (default: the server's own default)")
    ap.add_argument("--also-context-tokens", type=int, default=None,
                    help="one more server pass at this contextTokens, labelled lsp@N")
    ap.add_argument("--threads", type=int, default=None,
                    help="engine threads (default: the server's, all CPUs)")
    ap.add_argument("--lsp-run", action="append", default=[], metavar="NAME:SPEC",
                    help="one more server pass on the same tasks, e.g. "
                         "'fixed-192:budget=192' (adaptiveBudget off, contextTokens 192), "
                         "'fixed-1536:budget=1536' or 'paused-3s:pause=3' (the cursor "
                         "settles 3 s before the request); parts joined by ','")
    ap.add_argument("--server-env", action="append", default=[], metavar="QWEN_LSP_X=V",
                    help="a setting for every server pass, e.g. QWEN_LSP_ADAPTIVE_BUDGET=false")
    ap.add_argument("--max-file-chars", type=int, default=None,
                    help="only cut tasks from source files smaller than this")
    ap.add_argument("--out", default=str(ROOT / "bench" / "quality-results.json"))
    ap.add_argument("--write-md", action="store_true")
    ap.add_argument("--from-json", help="only re-render the report of a saved run")
    ap.add_argument("--reuse-engine", help="take the engine-only configurations from a "
                    "saved run (same seed and sizes) and run only the server passes")
    ap.add_argument("--rescore", action="store_true",
                    help="with --from-json: re-run the current post-processing over the "
                         "saved raw outputs (post-offline, post-literal)")
    ap.add_argument("--calibrate", action="store_true",
                    help="measure characters per token with the real tokenizer")
    args = ap.parse_args()
    if args.calibrate:
        calibrate()
        return
    if args.from_json:
        tasks, lsp, lspx, eng, meta, extra = load_results(Path(args.from_json))
        if args.rescore:
            rescore(tasks, eng, meta, per_file=args.per_file)
            meta["rescored"] = True
        table = report(tasks, lsp, lspx, eng, meta, extra)
        print(table)
        if args.write_md:
            write_md(table)
        return
    if args.quick:
        args.line, args.single, args.multi, args.cross = 8, 6, 4, 0
    THREADS["n"] = args.threads
    SERVER_ENV.update(kv.split("=", 1) for kv in args.server_env)
    if args.max_file_chars:
        MAX_FILE_CHARS.update(py=args.max_file_chars, js=args.max_file_chars)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {msg}", flush=True)

    wanted = {"line": args.line, "single": args.single, "multi": args.multi,
              "cross": args.cross}
    tasks = all_tasks(args.seed, wanted, args.per_file)
    counts = {k: sum(t.kind == k for t in tasks) for k in KINDS}
    log(f"tasks: {counts}")
    meta: dict[str, Any] = {"seed": args.seed, "counts": counts,
                            "context_tokens": args.context_tokens}
    if args.reuse_engine:
        # The engine pass does not involve the server: reuse a saved one and
        # post-process its raw outputs again with the current code.
        _, _, _, eng, old_meta, _ = load_results(Path(args.reuse_engine))
        probe = old_meta.get("chat_partial_probe", "")
        log(f"engine results reused from {args.reuse_engine} ({old_meta['date']})")
    else:
        eng, probe = await run_engine(tasks, context_tokens=args.context_tokens,
                                      partial_every=args.partial_every, log=log,
                                      literal=args.literal)
    rescore(tasks, eng, meta, per_file=args.per_file)
    partial_out = Path(args.out).with_suffix(".engine.json")
    partial_out.write_text(json.dumps({
        "meta": {**meta, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "chat_partial_probe": probe},
        "tasks": [{**asdict(t), "doc": None, "after": None} for t in tasks],
        "lsp": {}, "lsp_xfile": {},
        "engine": {k: {c: asdict(o) for c, o in v.items()} for k, v in eng.items()},
    }, indent=1), encoding="utf-8")  # usable with --reuse-engine if a server pass fails
    log(f"engine pass saved to {partial_out}")
    settled: dict[str, Outcome] = {}
    lsp = await run_lsp(tasks, cross_file=False, root=None,
                        context_tokens=args.context_tokens, log=log, settled=settled)
    for tid, outcome in settled.items():
        eng[tid]["lsp-settled"] = outcome
    extra: dict[str, dict[str, Outcome]] = {}
    if args.also_context_tokens:
        extra[f"lsp@{args.also_context_tokens}"] = await run_lsp(
            tasks, cross_file=False, root=None, context_tokens=args.also_context_tokens,
            log=log)
    for spec in args.lsp_run:
        name, env_extra, pause = parse_lsp_run(spec)
        extra[name] = await run_lsp(tasks, cross_file=False, root=None,
                                    context_tokens=args.context_tokens, log=log,
                                    env_extra=env_extra, pause_s=pause, label=name)
    cross = [t for t in tasks if t.kind == "cross"]
    lspx = await run_lsp(cross, cross_file=True, root=STDLIB,
                         context_tokens=args.context_tokens, log=log) if cross else {}
    argv = " ".join(sys.argv[1:])
    meta.update({
        "command": f"python bench/quality.py {argv}".strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
                   f"Python {platform.python_version()}",
        "model": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (llama-cpp-python)",
        "wall_min": (time.time() - started) / 60, "chat_partial_probe": probe,
        "threads": args.threads, "max_file_chars": args.max_file_chars,
        "server_env": dict(SERVER_ENV),
    })
    table = report(tasks, lsp, lspx, eng, meta, extra)
    print(table)
    Path(args.out).write_text(json.dumps({
        "meta": meta,
        # Documents are rebuilt from the seed when needed (--rescore).
        "tasks": [{**asdict(t), "doc": None, "after": None} for t in tasks],
        "lsp": {k: asdict(v) for k, v in lsp.items()},
        "lsp_xfile": {k: asdict(v) for k, v in lspx.items()},
        "lsp_extra": {label: {k: asdict(v) for k, v in outs.items()}
                      for label, outs in extra.items()},
        "engine": {k: {c: asdict(o) for c, o in v.items()} for k, v in eng.items()},
    }, indent=1), encoding="utf-8")
    if args.write_md:
        write_md(table)


if __name__ == "__main__":
    asyncio.run(main())
