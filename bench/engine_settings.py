"""Prompt processing speed of the bundled model at several engine batch settings.

The local engine runs llama-cpp-python with ``--n_batch 64``
(``qwen_lsp.prompt_cache.N_BATCH``). This measures what that costs against
larger batches and flash attention, in the same run: the same 1,400 tokens
of ``argparse.py`` evaluated from an empty KV cache, in process, 2 threads.

    python bench/engine_settings.py            # writes its section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import sysconfig
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_section

BENCHMARKS = ROOT / "BENCHMARKS.md"
START, END = "<!-- engine-settings:start -->", "<!-- engine-settings:end -->"
CONFIGS = [
    {"n_batch": 64},
    {"n_batch": 256, "n_ubatch": 256},
    {"n_batch": 512},
    {"n_batch": 512, "flash_attn": True},
    {"n_batch": 64, "flash_attn": True},
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from llama_cpp import Llama

    from qwen_lsp.providers.local_model import MODEL_FILENAME, model_cache_dir

    model = model_cache_dir() / MODEL_FILENAME
    if not model.exists():
        raise SystemExit(f"{model} is missing: run `qwen-lsp check` once to assemble it")
    text = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text(encoding="utf-8")
    load = os.getloadavg()[0]
    rows = []
    for cfg in CONFIGS:
        llm = Llama(model_path=str(model), n_ctx=4096, n_threads=2, verbose=False, **cfg)
        tokens = llm.tokenize(text[20000:40000].encode())[:1400]
        cells = []
        for n in (400, 1400):
            llm.reset()
            t = time.perf_counter()
            llm.eval(tokens[:n])
            cells.append(n / (time.perf_counter() - t))
        rows.append((cfg, cells))
        del llm
    lines = [START, "## Engine settings: prompt processing by batch size", "",
             (f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()}, {os.cpu_count()} "
              f"cores (load average {load:.1f} before, {os.getloadavg()[0]:.1f} after), bundled "
              "Qwen2.5-Coder-0.5B Q4_K_M in process, n_ctx 4096, 2 threads, an empty KV cache each "
              "time. Rerun: `python bench/engine_settings.py`."), "",
             "| settings | tokens/s, 400 tokens | tokens/s, 1,400 tokens |", "| --- | --- | --- |"]
    for cfg, (a, b) in rows:
        name = ", ".join(f"{k} {v}" for k, v in cfg.items())
        lines.append(f"| {name} | {a:.0f} | {b:.0f} |")
    lines += ["", END]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        write_section(BENCHMARKS, START, END, section)


if __name__ == "__main__":
    main()
