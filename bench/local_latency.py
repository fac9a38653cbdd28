"""First-run and warm latency of the embedded local engine, measured end to end.

Rows:
* CLI, first run: `qwen-lsp complete` with an empty model cache (assembles and
  verifies the 491 MB model, starts llama.cpp's server, completes).
* CLI, warm cache: the same with the model already assembled (the engine still
  starts per invocation).
* CLI in six real standard-library modules: at the end of a code line and at
  column 1 of the next line (the file unchanged); then with that next line
  taken out, at the end of the line before it and on a blank line opened in its
  place, scored against the missing line.
* Editor session: from starting `qwen-lsp` over stdio to the first inline
  completion, then further completions at other positions with the engine up.

Run: python bench/local_latency.py [--runs 3]
Writes its table to BENCHMARKS.md between the local-latency markers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import cpu_description, write_section
from tests.harness import inline, open_doc, server_env, start_client, stop_client

SAMPLE = ROOT / "examples" / "sample.py"
START, END = "<!-- local-latency:start -->", "<!-- local-latency:end -->"


def _cli(cache_home: Path, location: str = f"{SAMPLE}:5:5") -> float:
    return _cli_output(cache_home, location)[0]


def _cli_output(cache_home: Path, location: str) -> tuple[float, str]:
    env = server_env(Path(tempfile.mkdtemp()), XDG_CACHE_HOME=str(cache_home))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "qwen_lsp", "complete", location],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - t0
    # Exit 1: the model had nothing to add there (an honest answer, counted).
    if res.returncode not in (0, 1):
        raise SystemExit(f"complete {location} failed ({res.returncode}): {res.stderr[-500:]}")
    return elapsed, res.stdout


REAL_MODULES = ("argparse.py", "tarfile.py", "difflib.py", "typing.py", "colorsys.py",
                "shlex.py")


def _places(lines: list[str]) -> list[int]:
    """At 30% and 70% of a module: a code line followed by a code line inside a function."""
    out = []
    for frac in (0.3, 0.7):
        i = int(len(lines) * frac)
        while not (lines[i].strip() and lines[i + 1].startswith("        ")
                   and lines[i + 1].strip()):
            i += 1
        out.append(i)
    return out


def real_file_locations() -> list[str]:
    """Positions in the unmodified modules: the end of a code line, and column 1 of the
    next one. The file is complete there, so "nothing to add" is an honest answer."""
    import sysconfig

    out = []
    for name in REAL_MODULES:
        path = Path(sysconfig.get_paths()["stdlib"]) / name
        lines = path.read_text(encoding="utf-8").split("\n")
        for i in _places(lines):
            out.append(f"{path}:{i + 1}:{len(lines[i]) + 1}")  # end of a code line
            out.append(f"{path}:{i + 2}:1")  # the start of the next line
    return out


def mid_line_locations(per_module: int = 4, seed: int = 1) -> list[str]:
    """Positions inside the code of a line of the unmodified modules: a line of
    code (not a comment) drawn at random, a column drawn inside its text."""
    import random
    import sysconfig

    rng = random.Random(seed)
    out = []
    for name in REAL_MODULES:
        path = Path(sysconfig.get_paths()["stdlib"]) / name
        lines = path.read_text(encoding="utf-8").split("\n")
        code = [i for i, line in enumerate(lines)
                if len(line.strip()) > 2 and not line.strip().startswith("#")]
        for i in rng.sample(code, per_module):
            line = lines[i]
            first = len(line) - len(line.lstrip())
            col = rng.randrange(first + 1, len(line.rstrip()))  # 0-based, inside the text
            out.append(f"{path}:{i + 1}:{col + 1}")
    return out


def writing_locations(workdir: Path) -> list[tuple[str, str]]:
    """(location, expected line) where a user is about to write a line.

    A copy of each module without the line after a place: asked at the end of
    the line before it (the next line is offered there), and on a blank line
    opened in its place with the indentation an editor gives after Enter.
    """
    import sysconfig

    out = []
    for name in REAL_MODULES:
        lines = (Path(sysconfig.get_paths()["stdlib"]) / name).read_text(
            encoding="utf-8").split("\n")
        for k, i in enumerate(_places(lines)):
            want = lines[i + 1]
            indent = want[: len(want) - len(want.lstrip())]
            gone = lines[: i + 1] + lines[i + 2 :]
            at_end = workdir / f"end{k}_{name}"
            at_end.write_text("\n".join(gone), encoding="utf-8")
            out.append((f"{at_end}:{i + 1}:{len(lines[i]) + 1}", want.strip()))
            opened = workdir / f"enter{k}_{name}"
            opened.write_text("\n".join(lines[: i + 1] + [indent] + lines[i + 2 :]),
                              encoding="utf-8")
            out.append((f"{opened}:{i + 2}:{len(indent) + 1}", want.strip()))
    return out


SNIPPETS = [
    ("def add(a, b):\n    \n", 1, 4),
    ("def is_even(n):\n    return \n", 1, 11),
    ("import os\n\n\ndef home():\n    return os.\n", 4, 14),
    ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        \n", 3, 8),
    ("def area(w, h):\n    \n", 1, 4),
]


async def _session(cache_home: Path) -> tuple[float, list[float]]:
    env = server_env(Path(tempfile.mkdtemp()), XDG_CACHE_HOME=str(cache_home))
    t0 = time.perf_counter()
    client = await start_client(env)
    try:
        first = None
        warm: list[float] = []
        for i, (text, line, col) in enumerate(SNIPPETS):
            uri = f"file:///bench/local_{i}.py"
            open_doc(client, uri, text)
            t = time.perf_counter()
            res = await inline(client, uri, line, col)
            if first is None:
                first = time.perf_counter() - t0
            else:
                warm.append(time.perf_counter() - t)
            if not res or not res.items:
                print(f"warning: no completion for snippet {i}", file=sys.stderr)
    finally:
        await stop_client(client)
    assert first is not None
    return first, warm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    shared_cache = Path(tempfile.mkdtemp(prefix="qwen-bench-cache-"))
    firsts = [_cli(Path(tempfile.mkdtemp(prefix="qwen-bench-fresh-"))) for _ in range(args.runs)]
    _cli(shared_cache)  # assemble once for the warm runs
    warms = [_cli(shared_cache) for _ in range(args.runs)]
    real_runs = [_cli_output(shared_cache, loc) for loc in real_file_locations()]
    real = [t for t, _ in real_runs]
    shown = sum(1 for _, out in real_runs if out.strip())
    mid_runs = [_cli_output(shared_cache, loc) for loc in mid_line_locations()]
    mid = [t for t, _ in mid_runs]
    mid_shown = sum(1 for _, out in mid_runs if out.strip())
    places = writing_locations(Path(tempfile.mkdtemp(prefix="qwen-bench-writing-")))
    writing_runs = [(_cli_output(shared_cache, loc), want) for loc, want in places]
    writing = [t for (t, _), _ in writing_runs]
    w_shown = sum(1 for (_, out), _ in writing_runs if out.strip())
    w_exact = sum(1 for (_, out), want in writing_runs if out.strip() == want)
    session_first, session_warm = asyncio.run(_session(shared_cache))
    med = statistics.median
    rows = [
        ("CLI `qwen-lsp complete`, first run (empty model cache)", med(firsts), min(firsts),
         max(firsts), len(firsts)),
        ("CLI `qwen-lsp complete`, model cached (engine starts per run)", med(warms), min(warms),
         max(warms), len(warms)),
        (("CLI `qwen-lsp complete` in " + "/".join(REAL_MODULES) + " (100-3,600 lines), "
          "four places each, model cached (engine starts per run); "
          f"a suggestion printed at {shown} of {len(real)} (the files are complete there: "
          "exit 1, nothing to add, is an honest answer)"), med(real), min(real), max(real),
         len(real)),
        (("CLI `qwen-lsp complete` in the same modules inside the text of a line (a line "
          "and a column in it drawn at random, four a module): the suggestion there may "
          f"replace the rest of the line; a suggestion printed at {mid_shown} of {len(mid)}"),
         med(mid), min(mid), max(mid), len(mid)),
        (("CLI `qwen-lsp complete` in the same modules with the next line taken out, at the "
          "end of the line before it and on the blank line opened in its place; a suggestion "
          f"printed at {w_shown} of {len(writing)}, the missing line exactly at {w_exact}"),
         med(writing), min(writing), max(writing), len(writing)),
        ("Editor session: server start to first inline completion", session_first,
         session_first, session_first, 1),
        ("Editor session: later completions, engine warm", med(session_warm), min(session_warm),
         max(session_warm), len(session_warm)),
    ]
    cpu = os.cpu_count()
    lines = [
        START,
        "## Local engine latency",
        "",
        (
            f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()} "
            f"({cpu_description()}), {cpu} cores, "
            "Qwen2.5-Coder-0.5B Q4_K_M through llama-cpp-python's server. "
            "Rerun: `python bench/local_latency.py`."
        ),
        "",
        "| what | median s | min s | max s | runs |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {n} | {a:.2f} | {b:.2f} | {c:.2f} | {k} |" for n, a, b, c, k in rows],
        END,
    ]
    table = "\n".join(lines)
    print(table)
    write_section(ROOT / "BENCHMARKS.md", START, END, table)


if __name__ == "__main__":
    main()
