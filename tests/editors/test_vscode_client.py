"""VS Code's client stack: the node test in editors/vscode/test, plus tsc.

The node test speaks to the real server over stdio with vscode-jsonrpc and
the capabilities of vscode-languageclient 10.x, applies inline and menu
completions the way VS Code does and compares exact texts. This wrapper
starts the loopback fake of the Qwen API, answering each case by the line
the cursor is on, and checks the extension still compiles.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.editors.cases import CASES
from tests.fake_upstream import FakeUpstream, Recorded, Reply, fim_parts
from tests.harness import ROOT, openai_env

VSCODE = ROOT / "editors" / "vscode"

pytestmark = [
    pytest.mark.editor,
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
    pytest.mark.skipif(not (VSCODE / "node_modules").is_dir(),
                       reason="run `npm ci` in editors/vscode first (scripts/install-dev.sh)"),
]


def reply_by_cursor_line(rec: Recorded) -> Reply:
    """Answer with the case whose cursor line ends the FIM prefix."""
    prompt = rec.json.get("prompt", "") if isinstance(rec.json, dict) else ""
    prefix = fim_parts(prompt)[0]
    for case in CASES:
        if prefix.endswith(case.before.split("\n")[case.line]):
            return Reply(text=case.reply, chunks=[case.reply])
    return Reply(text="")


def test_node_client_applies_exact_texts(tmp_path: Path) -> None:
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(
        [{"name": c.name, "before": c.before, "line": c.line, "after": c.after} for c in CASES],
        ensure_ascii=False), encoding="utf-8")
    root = tmp_path / "proj"
    root.mkdir()
    with FakeUpstream(reply_by_cursor_line) as fake:
        env = openai_env(tmp_path, fake.openai_base)
        env.update(QWEN_TEST_SERVER=json.dumps([sys.executable, "-m", "qwen_lsp"]),
                   QWEN_TEST_CASES=str(cases_file), QWEN_TEST_ROOT=str(root))
        proc = subprocess.run(
            ["node", "--test", "--test-reporter=tap", "test/client.test.mjs"],
            cwd=VSCODE, env=env, capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL, check=False)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    # Every case ran both tests (plus the capability check) and none was skipped.
    assert f"# pass {2 * len(CASES) + 1}" in report, report
    assert "# skipped 0" in report and "# fail 0" in report, report
    assert len([r for r in fake.requests if r.path.endswith("/completions")]) >= len(CASES)


def test_extension_compiles(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        ["npx", "--no-install", "tsc", "-p", ".", "--outDir", str(out)],
        cwd=VSCODE, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "extension.js").is_file()
