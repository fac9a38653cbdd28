"""The extension in a real VS Code, as a user meets it.

VS Code 1.100.3 (code-server 4.100.3) in headless Chromium 156, driven by
Selenium. The extension is compiled, packaged with vsce and installed with
``--install-extension``; every setting is in the user's settings.json, with
``qwenLsp.serverCommand`` naming a ``qwen-lsp`` launcher, so the server starts
the way VS Code starts it for a user (vscode-languageclient appends
``--stdio``) and reads its backend (``qwen.provider``,
``qwen.baseUrl``) from ``workspace/configuration`` only. The upstream is the
loopback fake of the Qwen API.

The test types as a person does: key presses into the editor, commands from
the palette, automatic triggers only. One code-server serves the whole module;
the tests run in file order. Screenshots go to ``$QWEN_LSP_ARTIFACTS``
(default ``tests/artifacts``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.editors import vscode_web
from tests.editors.cases import CASES, Case
from tests.editors.vscode_web import CodeServer, Workbench, wait_for
from tests.fake_upstream import FakeUpstream, Recorded, Reply, fim_parts
from tests.harness import ROOT, server_env

ARTIFACTS = Path(os.environ.get("QWEN_LSP_ARTIFACTS", ROOT / "tests" / "artifacts"))
WHY_NOT = vscode_web.missing()

pytestmark = [pytest.mark.editor, pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]

BY_NAME = {c.name: c for c in CASES}
# The menu is off while ghost text is tested, so that Tab meets the ghost text only.
EDITOR_SETTINGS: dict[str, Any] = {
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "workbench.enableExperiments": False,
    "telemetry.telemetryLevel": "off",
    "extensions.autoCheckUpdates": False,
    "extensions.ignoreRecommendations": True,
    "security.workspace.trust.enabled": False,
    "files.autoSave": "off",
    "files.insertFinalNewline": False,
    "files.trimTrailingWhitespace": False,
    "editor.inlineSuggest.enabled": True,
    "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
    "editor.suggestOnTriggerCharacters": False,
    "editor.wordBasedSuggestions": "off",
    "editor.autoClosingBrackets": "never",
    "editor.autoClosingQuotes": "never",
    "editor.autoIndent": "none",
    # settings.json is edited by typing into it: no suggestions there.
    "[jsonc]": {"editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
                "editor.suggestOnTriggerCharacters": False},
}
# Typed into settings.json by the menu test (a later key wins over the one above).
MENU_ON = ', "editor.quickSuggestions": {"other": "on"}, "editor.inlineSuggest.enabled": false '



@dataclass
class Upstream:
    """The fake's answers: by the text of the cursor line, or a failure status."""

    fake: FakeUpstream = field(default_factory=FakeUpstream)
    replies: dict[str, str] = field(default_factory=dict)
    fail_status: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, rec: Recorded) -> Reply:
        with self.lock:
            if self.fail_status is not None:
                return Reply(status=self.fail_status)
            prompt = rec.json.get("prompt", "") if isinstance(rec.json, dict) else ""
            prefix = fim_parts(prompt)[0]
            for line, text in self.replies.items():
                if prefix.endswith(line):
                    return Reply(text=text)
        return Reply(text="")

    def completions(self) -> list[Recorded]:
        return [r for r in self.fake.requests if r.path.endswith("/completions")]


@dataclass
class VSCode:
    server: CodeServer
    page: Workbench
    upstream: Upstream
    folder: Path
    launcher: Path


LAUNCH_CODE = "import sys; from qwen_lsp.cli import main; sys.exit(main())"


def _launcher(path: Path) -> Path:
    """What ``pip install`` puts on PATH as ``qwen-lsp``, running this checkout's code."""
    path.write_text(
        f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -c '{LAUNCH_CODE}' \"$@\"\n",
        encoding="utf-8")
    path.chmod(0o755)
    return path


def _file_for(case: Case, typed: str) -> str:
    """The case's document before the person types ``typed`` at the end of its line."""
    lines = case.before.split("\n")
    assert lines[case.line].endswith(typed)
    lines[case.line] = lines[case.line][: len(lines[case.line]) - len(typed)]
    return "\n".join(lines)


# Which case each file holds, and what the person types at the end of its line.
FILES = {
    "ghost_single.py": (BY_NAME["single-line"], " + "),
    "ghost_multi.py": (BY_NAME["multi-line"], ":"),
    "menu_item.py": (BY_NAME["single-line-after-word"], "na"),
}


@pytest.fixture(scope="module")
def vscode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VSCode]:
    base = tmp_path_factory.mktemp("vscode")
    folder = base / "project"
    folder.mkdir()
    for name, (case, typed) in FILES.items():
        (folder / name).write_text(_file_for(case, typed), encoding="utf-8")
    (folder / "scratch.py").write_text("def total(items):\n    return \n", encoding="utf-8")

    upstream = Upstream()
    upstream.fake.reply = upstream
    for case, _ in FILES.values():
        upstream.replies[case.before.split("\n")[case.line]] = case.reply
    upstream.fake.start()

    # No QWEN_LSP_* variables and no key: the backend comes from settings.json only.
    env = server_env(base)
    server = CodeServer(base, env)
    vsix = vscode_web.package_extension(ROOT / "editors" / "vscode", base / "qwen-lsp.vsix",
                                        env)
    server.install_extension(vsix)
    launcher = _launcher(base / "qwen-lsp")
    server.write_settings({
        **EDITOR_SETTINGS,
        "qwenLsp.serverCommand": [str(launcher)],
        "qwen.provider": "openai",
        "qwen.baseUrl": upstream.fake.openai_base,
    })
    page = None
    try:
        server.start(folder)
        page = Workbench(server.url(folder), ARTIFACTS)
        wait_for("the Qwen status bar item (extension active)", page.qwen_status, timeout=90)
        yield VSCode(server, page, upstream, folder, launcher)
    finally:
        if page is not None:
            page.close()
        server.stop()
        upstream.fake.stop()


@pytest.fixture
def vs(vscode: VSCode, request: pytest.FixtureRequest) -> Iterator[VSCode]:
    """The shared VS Code; afterwards a screenshot, and every editor closed."""
    yield vscode
    vscode.page.screenshot("vscode-" + request.node.name.replace("/", "_"))
    # Closing an unsaved editor would ask; the scratch file is saved as it is.
    vscode.page.command("File: Save All Files")
    vscode.page.command("View: Close All Editors")


@contextlib.contextmanager
def _explained(vs: VSCode) -> Iterator[None]:
    """On a failed wait, add what the upstream saw to the message."""
    try:
        yield
    except AssertionError as exc:
        recs = vs.upstream.completions()
        tails = [str((r.json or {}).get("prompt", ""))[-200:] for r in recs[-3:]]
        raise AssertionError(f"{exc}; {len(recs)} upstream requests, the last prompts "
                             f"ending {tails!r}; status item {vs.page.qwen_status()!r}") from exc


def _saved(vs: VSCode, name: str) -> str:
    from selenium.webdriver.common.keys import Keys

    path = vs.folder / name
    before = path.stat().st_mtime_ns
    vs.page.chord(Keys.CONTROL, "s")
    wait_for(f"{name} to be saved", lambda: path.stat().st_mtime_ns != before, timeout=15)
    time.sleep(0.2)  # the write may be in progress
    return path.read_text(encoding="utf-8")


def _server_processes(vs: VSCode) -> dict[int, list[str]]:
    """pid -> command line of the language servers running under this code-server."""
    import psutil

    assert vs.server.proc is not None
    group = vs.server.proc.pid
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        try:
            mine = os.getpgid(proc.pid) == group
        except OSError:
            continue
        if mine and any(LAUNCH_CODE == part for part in cmd):
            found[proc.pid] = cmd
    return found


def test_server_starts_as_vscode_launches_it(vs: VSCode) -> None:
    """vscode-languageclient 10.1 adds ``--stdio`` to the command; the server must run.

    A server that rejects the flag exits at once and the client restarts it a
    few times: the first process must still be the one running later.
    """
    found = wait_for("the language server started by the extension",
                     lambda: _server_processes(vs), timeout=60)
    pid, cmd = next(iter(found.items()))
    assert "--stdio" in cmd[cmd.index(LAUNCH_CODE) + 1:], cmd
    time.sleep(8)  # long enough for Python to start, parse its arguments and exit
    assert list(_server_processes(vs)) == [pid]
    assert vs.page.qwen_status() is not None


@pytest.mark.parametrize("name", ["ghost_single.py", "ghost_multi.py"])
def test_ghost_text_appears_and_tab_accepts_it(vs: VSCode, name: str) -> None:
    from selenium.webdriver.common.keys import Keys

    case, typed = FILES[name]
    vs.page.open_file(name)
    vs.page.go_to_end_of_line(case.line)
    vs.page.type_text(typed)
    first = case.reply.lstrip("\n").split("\n", 1)[0].strip()
    with _explained(vs):
        wait_for(f"ghost text {first!r}", lambda: first in vs.page.ghost_text(), timeout=30)
    shot = vs.page.screenshot(f"vscode-ghost-text-{case.name}")
    assert shot.stat().st_size > 0
    vs.page.keys(Keys.TAB)
    wait_for("the ghost text to be accepted", lambda: not vs.page.ghost_text(), timeout=10)
    assert _saved(vs, name) == case.after


def test_no_settings_warning_for_a_backend_in_settings_json(vs: VSCode) -> None:
    """The backend is only in settings.json: no "settings" notification, no warning sign."""
    assert vs.upstream.completions(), "the earlier tests got completions"
    shown = vs.page.notifications()
    assert not [m for m in shown if "qwen-lsp" in m], shown
    icon, tooltip = vs.page.qwen_status() or ("", "")
    assert icon == "codicon-sparkle", (icon, tooltip)


def _type_until_request(vs: VSCode, typed: str, check: Any = None, timeout: float = 45) -> Recorded:
    """Type ``typed`` a piece at a time until the upstream sees a request passing ``check``."""
    seen = len(vs.upstream.fake.requests)
    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline:
        vs.page.type_text(typed[i % len(typed)])
        i += 1
        end = time.monotonic() + 2
        while time.monotonic() < end:
            new = [r for r in vs.upstream.fake.requests[seen:] if r.path.endswith("/completions")]
            hit = [r for r in new if check is None or check(r)]
            if hit:
                return hit[-1]
            time.sleep(0.1)
    raise AssertionError(f"no upstream request{' passing the check' if check else ''} "
                         f"after typing for {timeout:g} s")


def test_toggle_completions_stops_requests(vs: VSCode) -> None:
    vs.page.open_file("scratch.py")
    vs.page.go_to_end_of_line(1)
    vs.page.command("Qwen: Toggle Completions")
    wait_for("the status item to show completions off",
             lambda: (vs.page.qwen_status() or ("",))[0] == "codicon-circle-slash", timeout=15)
    assert vs.server.read_settings().get("qwen.enabled") is False
    # The server reads the change through workspace/configuration; give it time to.
    time.sleep(3)
    before = len(vs.upstream.fake.requests)
    vs.page.type_text("len(items) + ")
    time.sleep(4)  # what typing would have caused has had ample time to arrive
    vs.page.screenshot("vscode-toggle-off")
    assert vs.upstream.fake.requests[before:] == []

    vs.page.command("Qwen: Toggle Completions")
    wait_for("the status item to show completions on",
             lambda: (vs.page.qwen_status() or ("",))[0] == "codicon-sparkle", timeout=15)
    _type_until_request(vs, "1 + ")


def test_settings_change_reaches_the_server(vs: VSCode) -> None:
    vs.page.add_user_settings(', "qwen.model": "qwen-vscode-test", "qwen.temperature": 0.35 ',
                              vs.server.settings_file)
    vs.page.open_file("scratch.py")
    vs.page.go_to_end_of_line(1)
    rec = _type_until_request(
        vs, "a + ", check=lambda r: isinstance(r.json, dict) and r.json.get("model")
        == "qwen-vscode-test")
    assert rec.json["temperature"] == 0.35


def test_upstream_failure_warns_until_it_works_again(vs: VSCode) -> None:
    vs.page.open_file("scratch.py")
    vs.page.go_to_end_of_line(1)
    with vs.upstream.lock:
        vs.upstream.fail_status = 500
    _type_until_request(vs, "b + ")
    _icon, tooltip = wait_for("the warning sign", lambda: (
        s if (s := vs.page.qwen_status()) and s[0] == "codicon-warning" else None), timeout=15)
    vs.page.screenshot("vscode-upstream-warning")
    assert "500" in tooltip or "server" in tooltip.lower(), tooltip

    with vs.upstream.lock:
        vs.upstream.fail_status = None
    _type_until_request(vs, "c + ")
    wait_for("the status item back to normal", lambda: (
        vs.page.qwen_status() or ("",))[0] == "codicon-sparkle", timeout=30)


def test_completion_menu_item(vs: VSCode) -> None:
    from selenium.webdriver.common.keys import Keys

    # The menu while typing a word: the user turns quick suggestions on and
    # ghost text off (last, so the other tests keep ghost text).
    vs.page.add_user_settings(MENU_ON, vs.server.settings_file)
    case, typed = FILES["menu_item.py"]
    label = (case.before.split("\n")[case.line].rsplit(" ", 1)[-1] + case.reply).strip()
    vs.page.open_file("menu_item.py")
    vs.page.go_to_end_of_line(case.line)
    row = ".editor-widget.suggest-widget.visible .monaco-list-row.focused"
    with _explained(vs):
        # At a person's pace; one who sees no menu retypes the last letter.
        for attempt in range(2):
            if attempt:
                vs.page.keys(Keys.BACKSPACE)
                vs.page.type_text(typed[-1])
            else:
                vs.page.type_text(typed, pause=0.4)
            try:
                wait_for(f"the menu item {label!r}", lambda: label in "".join(
                    vs.page.texts(row)), timeout=15)
                break
            except AssertionError:
                if attempt:
                    raise
    vs.page.screenshot("vscode-menu-item")
    vs.page.keys(Keys.ENTER)
    assert _saved(vs, "menu_item.py") == case.after
