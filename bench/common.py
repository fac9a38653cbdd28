"""Shared pieces of the benchmarks: source files, typing scripts, truthful
fake replies, sliding-window baseline prompts and small statistics.

Nothing here talks LSP; ``bench/typing_replay.py`` drives the server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lsprotocol.types

from qwen_lsp import context as qctx
from qwen_lsp.prompts import FIM_PREFIX, FIM_SUFFIX, fim_prompt
from tests.fake_upstream import Recorded, Reply, common_prefix_len, tokenize

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SMALL_MODULES = ("textwrap.py", "shlex.py", "colorsys.py", "fnmatch.py")
# No module of the 3.11 standard library has 10k lines of code (pydoc_data/
# topics.py is a data blob), so the large file is lsprotocol's types.py: real
# code (14k lines) that is installed wherever qwen-lsp is, since pygls needs it.
LARGE_MODULE = Path(lsprotocol.types.__file__)
_WORD_TAIL = re.compile(r"\w+$")


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    text: str

    @property
    def lines(self) -> int:
        return self.text.count("\n") + 1


def load_sources(names: Sequence[str]) -> list[Source]:
    """Files by short name: a stdlib module file name or ``"large"``."""
    out = []
    for name in names:
        path = LARGE_MODULE if name == "large" else STDLIB / name
        label = f"lsprotocol/{path.name}" if name == "large" else name
        out.append(Source(label, path, path.read_text(encoding="utf-8")))
    return out


@dataclass(frozen=True)
class Key:
    """One keystroke: the text it inserts and the pause before it (seconds)."""

    text: str
    delay: float
    pos: int  # offset in the original file right after this key


@dataclass(frozen=True)
class Script:
    """Typing the window ``text[start:end]`` of a file, key by key.

    The editor opens ``text[:start] + text[end:]`` (the file with the window
    removed; the cursor sits after the first line's indentation) and the keys
    put the window back. Enter inserts the newline plus the next line's
    indentation at once, as an auto-indenting editor does.
    """

    source: Source
    start: int
    end: int
    keys: tuple[Key, ...]

    @property
    def initial_text(self) -> str:
        return self.source.text[: self.start] + self.source.text[self.end :]

    def doc_at(self, pos: int) -> str:
        """The document when the cursor (end of typed text) is at ``pos``."""
        return self.source.text[:pos] + self.source.text[self.end :]


def _window_start(text: str) -> int:
    """A deterministic place in the middle of the file: the first ``def``
    line at or after the middle (falls back to the first code line)."""
    lines = text.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    mid = len(lines) // 2
    fallback = None
    for i in range(mid, len(lines)):
        stripped = lines[i].strip()
        if not stripped:
            continue
        fallback = fallback if fallback is not None else i
        if stripped.startswith(("def ", "class ")):
            return offsets[i]
    return offsets[fallback if fallback is not None else 0]


def make_script(source: Source, max_keys: int, seed: int) -> Script:
    """Keys and timing: 60-180 ms per key, think pauses at some line starts."""
    text = source.text
    rng = random.Random(f"{seed}:{source.name}")
    line_start = _window_start(text)
    line_end = text.find("\n", line_start)
    indent = len(text[line_start:line_end]) - len(text[line_start:line_end].lstrip(" \t"))
    start = line_start + indent
    keys: list[Key] = []
    pos = start
    lines_done = 0
    while len(keys) < max_keys and pos < len(text):
        ch = text[pos]
        delay = rng.uniform(0.06, 0.18)
        if ch == "\n":
            nxt = text.find("\n", pos + 1)
            nxt = len(text) if nxt < 0 else nxt
            line = text[pos + 1 : nxt]
            ws = len(line) - len(line.lstrip(" \t"))
            if ws == len(line) and nxt == len(text):
                break
            keys.append(Key("\n" + line[:ws], delay, pos + 1 + ws))
            pos += 1 + ws
            lines_done += 1
            continue
        if keys and keys[-1].text.startswith("\n"):
            # Thinking before writing the next line, sometimes longer.
            if lines_done % 8 == 0:
                delay += rng.uniform(1.5, 3.0)
            elif rng.random() < 0.5:
                delay += rng.uniform(0.3, 1.2)
        keys.append(Key(ch, delay, pos + 1))
        pos += 1
    # End the window at the end of a line so the suffix stays clean.
    while keys and text[keys[-1].pos : keys[-1].pos + 1] not in ("\n", ""):
        keys.pop()
    end = keys[-1].pos if keys else start
    return Script(source, start, end, tuple(keys))


# -- the truthful fake model -----------------------------------------------------


def fim_parts(prompt: str) -> tuple[str, str]:
    """The FIM prefix and suffix inside a (file-level or repo-level) prompt."""
    head = prompt.rfind(FIM_PREFIX)
    mid = prompt.find(FIM_SUFFIX, head)
    if head < 0 or mid < 0:
        return "", ""
    return prompt[head + len(FIM_PREFIX) : mid], prompt[mid + len(FIM_SUFFIX) :]


def prefix_end(text: str, prompt: str, limit: int) -> int | None:
    """Where the prompt's FIM prefix ends in the original file (<= limit)."""
    prefix, _ = fim_parts(prompt)
    if not prefix:
        return None
    at = text.rfind(prefix, 0, limit)
    return None if at < 0 else at + len(prefix)


def continuation(text: str, at: int, lines: int = 10) -> str:
    """The file's next ``lines`` lines from ``at`` (the true answer)."""
    end = at
    for _ in range(lines):
        nxt = text.find("\n", end + 1)
        if nxt < 0:
            return text[at:]
        end = nxt
    return text[at:end]


class TruthModel:
    """Answers a FIM request with the file's true continuation at the cursor
    (``accuracy`` of the time, decided per cursor position so every run gets
    the same verdicts) and otherwise with code from elsewhere in the file."""

    def __init__(self, script: Script, accuracy: float, first_token: float,
                 token_delay: float, seed: int = 1) -> None:
        self.script = script
        self.seed = seed
        self.accuracy = accuracy
        self.first_token = first_token
        self.token_delay = token_delay

    def __call__(self, rec: Recorded) -> Reply:
        text = self.script.source.text
        body = rec.json if isinstance(rec.json, dict) else {}
        prompt = body.get("prompt") or ""
        at = prefix_end(text, prompt, self.script.end + 1)
        if at is None:
            answer = ""
        else:
            rng = random.Random(f"{self.seed}:{self.script.source.name}:{at}")
            if rng.random() < self.accuracy:
                answer = continuation(text, at)
            else:
                other = text.find("\n", rng.randrange(len(text))) + 1
                answer = continuation(text, other)
        return Reply(text=answer, first_token_delay=self.first_token,
                     token_delay=self.token_delay)


def is_true_prefix(truth: str, shown: str) -> bool:
    """A shown suggestion is useful when it is what the user goes on to type."""
    shown = shown.rstrip()
    return bool(shown.strip()) and truth.startswith(shown)


def word_before(text: str, pos: int) -> str:
    line = text[text.rfind("\n", 0, pos) + 1 : pos]
    m = _WORD_TAIL.search(line)
    return m.group(0) if m else ""


# -- baseline prompts ----------------------------------------------------------


@contextlib.contextmanager
def sliding_window() -> Iterator[None]:
    """Within this block build_context slides its prefix window line by line
    (anchor of 1 line) instead of anchoring it: the naive baseline layout.
    Affects this benchmark process only, never the server under test."""
    saved = qctx.ANCHOR_LINES
    qctx.ANCHOR_LINES = 1
    try:
        yield
    finally:
        qctx.ANCHOR_LINES = saved


def sliding_prompt(script: Script, pos: int, context_tokens: int = 1536) -> str:
    """The FIM prompt the server would build at ``pos``, but with a sliding
    prefix window."""
    doc = script.doc_at(pos)
    with sliding_window():
        ctx = qctx.build_context(doc, pos, uri="file:///bench/" + script.source.path.name,
                                 path=script.source.path.name, language="python",
                                 version=1, context_tokens=context_tokens)
    return fim_prompt(ctx)


def char_sliding_prompt(script: Script, pos: int, context_tokens: int = 1536) -> str:
    """Like :func:`sliding_prompt` but the prefix is the last N characters
    (the window's start moves with every key: the most naive layout)."""
    doc = script.doc_at(pos)
    own_chars = int(context_tokens * qctx.CHARS_PER_TOKEN)
    prefix_chars = own_chars - int(context_tokens * qctx.SUFFIX_SHARE * qctx.CHARS_PER_TOKEN)
    with sliding_window():
        ctx = qctx.build_context(doc, pos, uri="file:///bench/" + script.source.path.name,
                                 path=script.source.path.name, language="python",
                                 version=1, context_tokens=context_tokens)
    prefix = doc[max(0, pos - prefix_chars):pos]
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{ctx.fim_suffix}<|fim_middle|>"


# -- statistics ------------------------------------------------------------------


def suffix_tokens(prompt: str) -> int:
    """Tokens from the FIM suffix marker on: the part of a PSM prompt that
    comes after the cursor and so can never be shared with the next prompt."""
    at = prompt.rfind(FIM_SUFFIX)
    return 0 if at < 0 else len(tokenize(prompt[at:]))


def prefix_reuse(prompts: Sequence[str]) -> tuple[int, int, int]:
    """Tokens shared with the previous prompt's prefix, all prompt tokens, and
    the tokens of the prompts that have a previous one (all but the first).

    The first prompt of a run has nothing to repeat: the reuse rate is
    ``shared / followers``; ``shared / total`` also charges the cold start.
    """
    shared = total = followers = 0
    prev: list[str] | None = None
    for prompt in prompts:
        toks = tokenize(prompt)
        total += len(toks)
        if prev is not None:
            shared += common_prefix_len(prev, toks)
            followers += len(toks)
        prev = toks
    return shared, total, followers


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    idx = min(len(data) - 1, max(0, round(q * (len(data) - 1))))
    return data[idx]


# -- command lines and BENCHMARKS.md -------------------------------------------------


def replay_arguments(p: argparse.ArgumentParser) -> None:
    """The options the typing and cost replays share."""
    p.add_argument("--quick", action="store_true", help="2 files, 150 keys each (~1 min)")
    p.add_argument("--keys", type=int, default=None, help="keys per file (default 400)")
    p.add_argument("--files", nargs="*", default=None,
                   help="stdlib module file names, or 'large' for the 14k-line file")
    p.add_argument("--accuracy", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    p.add_argument("--raw", type=Path, default=None, help="save raw per-request JSON here")


def replay_defaults(args: argparse.Namespace, quick_file: str) -> argparse.Namespace:
    if args.files is None:
        args.files = [quick_file, "large"] if args.quick else [*SMALL_MODULES, "large"]
    if args.keys is None:
        args.keys = 150 if args.quick else 400
    return args


def run_workers(module: str, runs: Sequence[str], args: argparse.Namespace,
                cwd: Path) -> dict[str, object]:
    """One ``python -m module --worker RUN`` process per run, all at once; their JSON."""
    procs = {}
    for run in runs:
        cmd = [sys.executable, "-m", module, "--worker", run,
               "--keys", str(args.keys), "--seed", str(args.seed),
               "--accuracy", str(args.accuracy), "--files", *args.files]
        procs[run] = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE)
    results = {}
    for run, proc in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker {run} failed with exit code {proc.returncode}")
        results[run] = json.loads(stdout)
    return results


def write_section(path: Path, start: str, end: str, section: str) -> None:
    """Put ``section`` (which begins with ``start`` and ends with ``end``) into the
    markdown file at ``path``: in place of the old one, or appended."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        new = old[: old.index(start)] + section + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new, encoding="utf-8")


def cpu_description() -> str:
    """The CPU's model and widest vector unit (prompt speed differs by 2-3x between
    this project's machines: AVX2-only EPYCs and AVX-512 ones)."""
    import platform

    model, flags = platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    vector = next((name for flag, name in (("amx_tile", "AMX"), ("avx512f", "AVX-512"),
                                           ("avx2", "AVX2")) if flag in flags), "")
    return f"{model}{', ' + vector if vector else ''}"
