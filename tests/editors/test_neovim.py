"""Neovim, headless, drives its own LSP completion against the real server.

The driver (nvim_driver.lua) configures Neovim exactly as editors/README.md
says (``require('qwen_lsp').setup``), opens a Python file, presses
``<C-x><C-o>`` at the end of a line so Neovim's omnifunc sends
textDocument/completion and inserts the answer with ``complete()``, leaves
insert mode, and writes the buffer. Only the Qwen API is faked (loopback).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.editors.cases import CASES, IDS, Case
from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import ROOT, openai_env

# Debian's Neovim (0.7.2 on Debian 12), not the newer one the test extra
# installs as an `nvim` script on PATH (that one has its own test module).
NVIM = "/usr/bin/nvim" if Path("/usr/bin/nvim").exists() else shutil.which("nvim")

pytestmark = [
    pytest.mark.editor,
    pytest.mark.skipif(NVIM is None, reason="Debian's nvim is not installed"),
]

DRIVER = Path(__file__).with_name("nvim_driver.lua")


def run_nvim(case: Case, tmp_path: Path, fake: FakeUpstream) -> dict:
    src = tmp_path / "proj" / "greet.py"
    src.parent.mkdir(parents=True)
    src.write_text(case.before, encoding="utf-8")
    out = tmp_path / "result.json"
    env = openai_env(tmp_path, fake.openai_base)
    env.update(
        QWEN_TEST_OUT=str(out),
        QWEN_TEST_FILE=str(src),
        QWEN_TEST_LINE=str(case.line + 1),
        QWEN_TEST_RTP=str(ROOT / "editors" / "nvim"),
        QWEN_TEST_CMD=json.dumps([sys.executable, "-m", "qwen_lsp"]),
        XDG_STATE_HOME=str(tmp_path / "state"),
        XDG_DATA_HOME=str(tmp_path / "data"),
    )
    proc = subprocess.run(
        [NVIM, "--headless", "--clean", "-u", str(DRIVER)],
        env=env, cwd=src.parent, capture_output=True, timeout=90,
        stdin=subprocess.DEVNULL, check=False,
    )
    assert out.exists(), f"nvim wrote no result (rc={proc.returncode}): {proc.stderr[-2000:]!r}"
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_neovim_omnifunc_inserts_exact_text(case: Case, tmp_path: Path) -> None:
    with FakeUpstream(Reply(text=case.reply, chunks=[case.reply])) as fake:
        result = run_nvim(case, tmp_path, fake)
    assert result["error"] is None, result
    # Neovim drops the final empty line of the file when it shows lines.
    assert "\n".join(result["lines"]) + "\n" == case.after
    completions = [r for r in fake.requests if r.path.endswith("/completions")]
    assert completions, "the server never asked the model"
