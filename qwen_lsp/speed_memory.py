"""The local engine's measured prompt throughput, remembered between runs.

The prompt budget of the embedded engine is sized from its speed (see
prompt_cache.py). A language server measures it from its own requests, but a
fresh process (``qwen-lsp complete``, or the first request of a new editor
session) would otherwise start from a cautious guess and send a window of a
few lines. The last measurement on this machine is kept in the cache
directory beside the model, keyed by the CPU it was taken on.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path

from qwen_lsp.providers.local_model import model_cache_dir

FILE_NAME = "engine-speed.json"
# Plausible prompt speeds (tokens/s) for the bundled model on a CPU.
_LOW, _HIGH = 5.0, 20_000.0


def speed_file() -> Path:
    return model_cache_dir().parent / FILE_NAME


def _machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{platform.machine()} {cpu} x{os.cpu_count()}"


def load_speed(path: Path | None = None) -> float | None:
    """The remembered tokens/s for this machine, or None (none, another CPU, unreadable)."""
    try:
        data = json.loads((path or speed_file()).read_text(encoding="utf-8"))
        value = float(data["promptTokensPerSecond"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data.get("machine") != _machine() or not _LOW <= value <= _HIGH:
        return None
    return value


def save_speed(tokens_per_s: float, path: Path | None = None) -> None:
    """Remember ``tokens_per_s``; never raises (a read-only cache costs only the memory)."""
    target = path or speed_file()
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"promptTokensPerSecond": round(tokens_per_s, 1),
                                   "machine": _machine()}), encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
