"""Emacs in batch mode: eglot + completion-at-point against the real server.

The driver (emacs_driver.el) loads editors/emacs/qwen-lsp.el exactly as
editors/README.md says, opens a Python file, lets eglot connect to qwen-lsp
(started the way the README's command does, but with this checkout's
Python), runs ``completion-at-point`` at the end of a line (eglot picks the
only candidate and applies its textEdit) and writes the buffer text.
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

pytestmark = [
    pytest.mark.editor,
    pytest.mark.skipif(shutil.which("emacs") is None, reason="emacs is not installed"),
]

DRIVER = Path(__file__).with_name("emacs_driver.el")


def run_emacs(case: Case, tmp_path: Path, fake: FakeUpstream) -> dict:
    src = tmp_path / "proj" / "greet.py"
    src.parent.mkdir(parents=True)
    (src.parent / ".git").mkdir()  # the project root eglot will report
    src.write_text(case.before, encoding="utf-8")
    out = tmp_path / "result.json"
    env = openai_env(tmp_path, fake.openai_base)
    env.update(
        QWEN_TEST_OUT=str(out),
        QWEN_TEST_FILE=str(src),
        QWEN_TEST_LINE=str(case.line + 1),
        QWEN_TEST_EL=str(ROOT / "editors" / "emacs" / "qwen-lsp.el"),
        QWEN_TEST_CMD=json.dumps([sys.executable, "-m", "qwen_lsp"]),
        HOME=str(tmp_path / "home"),
    )
    proc = subprocess.run(
        ["emacs", "--batch", "-Q", "-l", str(DRIVER)],
        env=env, cwd=src.parent, capture_output=True, timeout=90,
        stdin=subprocess.DEVNULL, check=False,
    )
    assert out.exists(), f"emacs wrote no result (rc={proc.returncode}): {proc.stderr[-2000:]!r}"
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_eglot_completion_at_point_inserts_exact_text(case: Case, tmp_path: Path) -> None:
    with FakeUpstream(Reply(text=case.reply, chunks=[case.reply])) as fake:
        result = run_emacs(case, tmp_path, fake)
    assert result["error"] is None, result
    assert result["eglot"], "eglot's version was not found"
    assert result["text"] == case.after
    assert [r for r in fake.requests if r.path.endswith("/completions")]
