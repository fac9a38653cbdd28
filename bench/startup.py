"""Start-up time of the language server: spawn -> `initialize` answered.

Rows, each over several runs (p50 / p90 / min / max, seconds):
* baselines in the same run: `python -c pass`, `python -c "import pygls, lsprotocol"`, and
  `python -c "import pygls.lsp.server"` (pygls' server with lsprotocol's 14k-line types
  module, which any pygls server imports before it can answer);
* `python -m qwen_lsp --stdio` and the installed `qwen-lsp --stdio` script: from spawn to
  the `initialize` result on stdout (the request is written at spawn, as an editor does);
* the import time of the heavy modules on their own (`python -X importtime`, cumulative),
  and which of them the server has loaded when it answers `initialize` (none should be).

The machine's load average is printed and written with the table: on a shared machine
the numbers are only comparable with the baselines of the same run.

Run: python bench/startup.py [--runs 10] [--write] [--compare OTHER_CHECKOUT]
With --write the table goes to BENCHMARKS.md between the startup markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- startup:start -->", "<!-- startup:end -->"
HEAVY = ("lsprotocol.types", "pygls.lsp.server", "httpx", "qwen_lsp.server",
         "qwen_lsp.engine", "qwen_lsp.neighbours", "qwen_lsp.postprocess",
         "qwen_lsp.providers.openai", "qwen_lsp.items", "qwen_lsp.context")
# Modules the server must not have imported yet when it answers `initialize`.
DEFERRED = ("httpx", "qwen_lsp.engine", "qwen_lsp.neighbours", "qwen_lsp.postprocess",
            "qwen_lsp.providers.openai", "qwen_lsp.items", "cachetools")
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"processId": None, "rootUri": None, "capabilities": {}}}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QWEN_LSP_") and k not in ("DASHSCOPE_API_KEY",)}
    env["XDG_CONFIG_HOME"] = tempfile.mkdtemp()
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # A remote provider: no local engine is started by any of the runs.
    env["QWEN_LSP_PROVIDER"] = "openai"
    env["QWEN_LSP_BASE_URL"] = "http://127.0.0.1:9/v1"
    return env


def _frame(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _read_message(stream) -> dict:
    length = None
    while True:
        line = stream.readline()
        if not line:
            raise RuntimeError("the server closed stdout before answering")
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
        elif line in (b"\r\n", b"\n") and length is not None:
            return json.loads(stream.read(length))


def time_initialize(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds from spawn to the `initialize` result."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(_frame(INITIALIZE))
        proc.stdin.flush()
        while True:
            msg = _read_message(proc.stdout)
            if msg.get("id") == 1:
                elapsed = time.perf_counter() - t0
                if "result" not in msg:
                    raise RuntimeError(f"initialize failed: {msg}")
                return elapsed
    finally:
        proc.kill()
        proc.wait(10)


def time_command(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def import_time(module: str, env: dict[str, str]) -> float:
    """Cumulative import time of ``module`` alone in a fresh interpreter (seconds)."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         env=env, capture_output=True, text=True, check=True)
    for line in reversed(res.stderr.splitlines()):
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1]) / 1e6
    raise RuntimeError(f"no import time for {module}")


def loaded_at_initialize(env: dict[str, str]) -> list[str]:
    """The DEFERRED modules that are loaded once `initialize` has been answered."""
    probe = (
        "import sys, threading\n"
        "from qwen_lsp.server import create_server\n"
        "ls = create_server()\n"
        "orig = ls.protocol._send_data\n"
        "def send(data):\n"
        "    orig(data)\n"
        "    if getattr(data, 'id', None) == 1:\n"
        f"        names = [m for m in {DEFERRED!r} if m in sys.modules]\n"
        "        sys.stderr.write('LOADED ' + ','.join(names) + '\\n'); sys.stderr.flush()\n"
        "        import os; os._exit(0)\n"
        "ls.protocol._send_data = send\n"
        "ls.start_io()\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], env=env, input=_frame(INITIALIZE),
                          capture_output=True, timeout=120, check=False)
    for line in proc.stderr.decode(errors="replace").splitlines():
        if line.startswith("LOADED "):
            return [m for m in line[len("LOADED "):].split(",") if m]
    raise RuntimeError(f"probe failed: {proc.stderr[-500:]!r}")


def _describe_checkout(path: Path) -> str:
    res = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h"],
                         capture_output=True, text=True, check=False)
    commit = res.stdout.strip()
    return f"commit {commit}" if commit else str(path)


def _installed_script() -> str | None:
    """The `qwen-lsp` console script; behind a pyenv shim, the script it runs."""
    found = shutil.which("qwen-lsp")
    if found and "/shims/" in found and shutil.which("pyenv"):
        res = subprocess.run(["pyenv", "which", "qwen-lsp"], capture_output=True, text=True,
                             check=False)
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
    return found


def _stats(values: list[float]) -> tuple[float, float, float, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(ordered), p90, ordered[0], ordered[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    ap.add_argument("--compare", type=Path, metavar="CHECKOUT",
                    help="also time `python -m qwen_lsp` from another checkout (e.g. before "
                         "a change), interleaved with the others")
    args = ap.parse_args()
    env = _env()
    py = sys.executable
    load_before = os.getloadavg()
    rows: list[tuple[str, list[float]]] = []
    measured: dict[str, list[float]] = {}
    script = _installed_script()
    spawns = [
        ("baseline: `python -c pass` (to exit)", lambda: time_command([py, "-c", "pass"], env)),
        ("baseline: `python -c \"import pygls, lsprotocol\"` (to exit)",
         lambda: time_command([py, "-c", "import pygls, lsprotocol"], env)),
        ("baseline: `python -c \"import pygls.lsp.server\"` (to exit)",
         lambda: time_command([py, "-c", "import pygls.lsp.server"], env)),
        ("`python -m qwen_lsp --stdio`: spawn to `initialize` answered",
         lambda: time_initialize([py, "-m", "qwen_lsp", "--stdio"], env)),
    ]
    if args.compare:
        other = dict(env, PYTHONPATH=str(args.compare.resolve()))
        label = _describe_checkout(args.compare)
        name = f"`python -m qwen_lsp --stdio` from {label}: spawn to `initialize` answered"
        spawns.append((name, lambda: time_initialize([py, "-m", "qwen_lsp", "--stdio"], other)))
    if script:
        spawns.append(("installed `qwen-lsp --stdio`: spawn to `initialize` answered",
                       lambda: time_initialize([script, "--stdio"], env)))
    # Interleaved, so that a burst of load elsewhere hits every row alike.
    for _ in range(args.runs):
        for name, run in spawns:
            measured.setdefault(name, []).append(run())
    rows.extend((name, measured[name]) for name, _ in spawns)
    imports: list[tuple[str, list[float]]] = []
    for module in HEAVY:
        values = [import_time(module, env) for _ in range(max(3, args.runs // 2))]
        imports.append((f"import `{module}` alone (cumulative)", values))
    loaded = loaded_at_initialize(env)
    load_after = os.getloadavg()

    cpu = os.cpu_count()
    shared = max(load_before[0], load_after[0]) > 0.5 * (cpu or 1)
    lines = [
        START,
        "## Start-up: spawn to `initialize` answered",
        "",
        (f"Command: `python bench/startup.py --runs {args.runs} --write"
         + (f" --compare <checkout of {_describe_checkout(args.compare)}>" if args.compare
            else "") + "`. Date: "
         f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: {cpu} cores ({platform.machine()}), "
         f"Python {platform.python_version()}; load average {load_before[0]:.1f} before, "
         f"{load_after[0]:.1f} after"
         + (" (the machine was shared and busy: compare with the baselines of this run, "
            "not with absolute targets)." if shared else " (quiet).")),
        "",
        "| what | p50 s | p90 s | min s | max s | runs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, values in [*rows, *imports]:
        p50, p90, lo, hi = _stats(values)
        lines.append(f"| {name} | {p50:.3f} | {p90:.3f} | {lo:.3f} | {hi:.3f} | {len(values)} |")
    lines += [
        "",
        ("Deferred modules already loaded when `initialize` is answered: "
         + (", ".join(f"`{m}`" for m in loaded) if loaded else "none")
         + f" (checked: {', '.join(f'`{m}`' for m in DEFERRED)})."),
        END,
    ]
    table = "\n".join(lines)
    print(table)
    if script is None:
        print("note: no `qwen-lsp` script on PATH; its row is missing", file=sys.stderr)
    if args.write:
        sys.path.insert(0, str(ROOT))
        from bench.common import write_section

        write_section(ROOT / "BENCHMARKS.md", START, END, table)


if __name__ == "__main__":
    main()
