"""The qwen-lsp command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qwen_lsp import __version__
from tests.fake_upstream import FakeUpstream, Reply, fim_parts
from tests.harness import openai_env, server_env

# Runs the CLI with llama_cpp hidden from the import system, as on a machine
# without the local extra.
NO_LOCAL = (
    "import sys; sys.modules['llama_cpp'] = None; "
    "from qwen_lsp.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _run(args: list[str], env: dict[str, str], *, hide_local: bool = False,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", NO_LOCAL, *args] if hide_local else [
        sys.executable, "-m", "qwen_lsp", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False,
                          cwd=cwd)


def _sample(tmp_path: Path) -> Path:
    f = tmp_path / "calc.py"
    f.write_text("def add(a, b):\n    \n\nprint(add(1, 2))\n", encoding="utf-8")
    return f


def test_version(tmp_path) -> None:
    res = _run(["--version"], server_env(tmp_path))
    assert res.returncode == 0 and res.stdout.strip() == f"qwen-lsp {__version__}"


def test_complete_prints_the_upstream_completion(tmp_path) -> None:
    f = _sample(tmp_path)
    with FakeUpstream(Reply(text="return a + b\n\nprint(add(3, 4))\n")) as fake:
        res = _run(["complete", f"{f}:2:5"], openai_env(tmp_path, fake.openai_base))
    assert res.returncode == 0, res.stderr
    # Post-processed: the copy of the code below the cursor is gone.
    assert res.stdout == "return a + b\n"
    body = next(r for r in fake.requests if r.method == "POST").json
    assert body["prompt"] == ("<|fim_prefix|>def add(a, b):<|fim_suffix|>\n\nprint(add(1, 2))"
                              "\n<|fim_middle|>")


def test_complete_exits_1_when_there_is_nothing(tmp_path) -> None:
    f = _sample(tmp_path)
    with FakeUpstream(Reply(text="   ")) as fake:
        res = _run(["complete", f"{f}:2:5"], openai_env(tmp_path, fake.openai_base))
    assert res.returncode == 1 and res.stdout == ""
    assert f"no suggestion at {f}:2:5" in res.stderr


def test_complete_never_prints_a_cut_off_answer(tmp_path) -> None:
    """The time box ends mid-answer: exit 2 with the reason, nothing on stdout."""
    f = _sample(tmp_path)
    reply = Reply(chunks=["return a", " + b\n"], token_delay=30.0)
    with FakeUpstream(reply) as fake:
        res = _run(["complete", f"{f}:2:5"],
                   openai_env(tmp_path, fake.openai_base, QWEN_LSP_TIMEOUT_MS="3000"))
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stdout == ""
    assert "not complete" in res.stderr and "timeoutMs" in res.stderr


def test_complete_exits_2_on_errors(tmp_path) -> None:
    f = _sample(tmp_path)
    env = openai_env(tmp_path, "http://127.0.0.1:9/v1")  # nothing listens on port 9
    bad = [
        ["complete", f"{f}:x:1"],
        ["complete", f"{tmp_path / 'missing.py'}:1:1"],
        ["complete", f"{f}:99:1"],
        ["complete", f"{f}:2:5"],  # connection refused
    ]
    for args in bad:
        res = _run(args, env)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert res.stdout == "" and res.stderr.startswith("qwen-lsp: "), args


def test_check_fails_clearly_without_key_or_local_engine(tmp_path) -> None:
    res = _run(["check"], server_env(tmp_path), hide_local=True)
    assert res.returncode != 0
    assert "DASHSCOPE_API_KEY" in res.stderr and 'pip install -e ".[local]"' in res.stderr


def test_check_reports_settings_redacted_and_a_working_upstream(tmp_path) -> None:
    key = "sk-check-secret-123456789"
    with FakeUpstream(Reply(text="a + b")) as fake:
        env = server_env(tmp_path, DASHSCOPE_API_KEY=key, QWEN_LSP_BASE_URL=fake.openai_base)
        res = _run(["check"], env)
    assert res.returncode == 0, res.stderr
    assert key not in res.stdout + res.stderr
    assert '"provider": "dashscope"' in res.stdout and "ok:" in res.stdout
    post = next(r for r in fake.requests if r.method == "POST")
    assert post.path.endswith("/chat/completions")
    assert post.json["messages"][-1]["partial"] is True
    # What one typical request costs: 1,536 input + 40 output tokens of
    # qwen3-coder-flash ($0.3 / $1.5 per million) without any cache hit.
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("cost of a typical"))
    no_hit = (1536 * 0.3 + 40 * 1.5) / 1e6
    assert f"{no_hit:.6f} USD with no cache hit" in line
    assert "explicit cache hit on 90%" in line and "contextCache policy" in line


def test_check_says_when_the_model_has_no_price(tmp_path) -> None:
    with FakeUpstream(Reply(text="a + b")) as fake:
        env = server_env(tmp_path, DASHSCOPE_API_KEY="sk-check-secret-123456789",
                         QWEN_LSP_BASE_URL=fake.openai_base, QWEN_LSP_MODEL="my-model")
        res = _run(["check"], env)
    assert res.returncode == 0, res.stderr
    assert "no price known for model 'my-model'; set `prices`" in res.stdout


def test_check_fails_with_the_cause_on_a_rejected_key(tmp_path) -> None:
    with FakeUpstream(Reply(status=401)) as fake:
        env = server_env(tmp_path, DASHSCOPE_API_KEY="sk-wrong-000000",
                         QWEN_LSP_BASE_URL=fake.openai_base)
        res = _run(["check"], env)
    assert res.returncode == 2
    assert "region" in res.stderr and "sk-wrong-000000" not in res.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_over_tcp_answers_initialize(tmp_path) -> None:
    import json
    import socket
    import time

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen_lsp", "serve", "--tcp", "--host", "127.0.0.1",
         "--port", str(port)],
        env=openai_env(tmp_path, "http://127.0.0.1:9/v1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                           "params": {"processId": None, "rootUri": None,
                                      "capabilities": {}}}).encode()
        conn.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
        length = int(fields[b"Content-Length"])
        while len(rest) < length:
            rest += conn.recv(65536)
        reply = json.loads(rest[:length])
        conn.close()
    finally:
        proc.kill()
        proc.wait(10)
    caps = reply["result"]["capabilities"]
    assert reply["result"]["serverInfo"]["name"] == "qwen-lsp"
    assert caps["inlineCompletionProvider"] is not None
    assert caps["completionProvider"]["triggerCharacters"]
    assert caps["textDocumentSync"]["change"] == 2  # incremental
    assert "qwen.stats" in caps["executeCommandProvider"]["commands"]


def test_complete_prints_the_whole_block_not_an_early_answer(tmp_path) -> None:
    """Editors get complete lines early; the CLI waits for the whole suggestion."""
    f = _sample(tmp_path)
    # The second line is still arriving when the engine could answer early.
    reply = Reply(chunks=["\n    total = a + b\n", "    return", " total\n"], token_delay=0.8)
    with FakeUpstream(reply) as fake:
        res = _run(["complete", f"{f}:2:5"], openai_env(tmp_path, fake.openai_base))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "total = a + b\n    return total\n"


def _initialize_over(proc: subprocess.Popen[bytes]) -> dict:
    import json

    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                       "params": {"processId": None, "rootUri": None,
                                  "capabilities": {}}}).encode()
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    proc.stdin.flush()
    length = None
    while True:
        line = proc.stdout.readline()
        assert line, "the server closed stdout before answering initialize"
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
        if line in (b"\r\n", b"\n") and length is not None:
            break
    return json.loads(proc.stdout.read(length))


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "qwen_lsp", *args], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)



@pytest.mark.parametrize("args", [
    ["--stdio"],  # what vscode-languageclient appends to a bare command
    ["--stdio", "--clientProcessId=1"],
    ["serve", "--stdio"],
    ["serve", "--stdio", "--clientProcessId=1"],
    ["--clientProcessId", "1", "serve"],
])
def test_generic_client_launch_flags_start_the_server(tmp_path, args) -> None:
    proc = _spawn(args, openai_env(tmp_path, "http://127.0.0.1:9/v1"))
    try:
        reply = _initialize_over(proc)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=30)
    assert reply["result"]["serverInfo"]["name"] == "qwen-lsp", err


def test_server_exits_when_the_client_process_dies(tmp_path) -> None:
    editor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    proc = _spawn(["--stdio", f"--clientProcessId={editor.pid}"],
                  openai_env(tmp_path, "http://127.0.0.1:9/v1"))
    try:
        assert _initialize_over(proc)["result"]["serverInfo"]["name"] == "qwen-lsp"
        assert proc.poll() is None  # alive while the editor is
        editor.kill()
        editor.wait(10)
        # stdin stays open: only the watch on the client's pid can end the server.
        assert proc.wait(timeout=60) == 0
    finally:
        editor.kill()
        proc.kill()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("flag", ["--pipe=/tmp/qwen.sock", "--socket=5007", "--node-ipc"])
def test_unsupported_transports_are_refused_clearly(tmp_path, flag) -> None:
    res = _run([flag], server_env(tmp_path))
    assert res.returncode == 2
    assert "transport is not supported" in res.stderr and "--stdio" in res.stderr


def test_complete_refuses_binary_files_without_a_request(tmp_path) -> None:
    ls_copy = tmp_path / "ls.py"
    ls_copy.write_bytes(Path("/bin/ls").read_bytes())
    junk = tmp_path / "junk.py"  # no NUL, but mostly invalid UTF-8
    junk.write_bytes(b"x = 1\n" + bytes(range(0x80, 0x100)) * 8)
    with FakeUpstream(Reply(text="1")) as fake:
        env = openai_env(tmp_path, fake.openai_base)
        for f in (ls_copy, junk):
            res = _run(["complete", f"{f}:1:1"], env)
            assert res.returncode == 1, (f, res.stderr)
            assert res.stdout == "" and "not a text file" in res.stderr, f
        assert fake.requests == []


def _eight_lines(tmp_path: Path) -> Path:
    f = tmp_path / "eight.py"
    f.write_text("".join(f"x{i} = {i}\n" for i in range(1, 9)), encoding="utf-8")
    return f


def test_complete_counts_lines_and_refuses_positions_outside_the_file(tmp_path) -> None:
    f = _eight_lines(tmp_path)  # 8 lines, each "xN = N" (6 characters), final newline
    with FakeUpstream(Reply(text="9")) as fake:
        env = openai_env(tmp_path, fake.openai_base)
        res = _run(["complete", f"{f}:99:1"], env)
        assert res.returncode == 2
        assert "has only 8 lines" in res.stderr and "LINE must be 1 to 9" in res.stderr
        res = _run(["complete", f"{f}:2:8"], env)  # one past the end of the line
        assert res.returncode == 2
        assert "line 2 has 6 characters" in res.stderr and "COL must be 1 to 7" in res.stderr
        res = _run(["complete", f"{f}:9:2"], env)  # the empty last line has one place
        assert res.returncode == 2 and "line 9 has 0 characters" in res.stderr
        assert fake.requests == []
        # The end of a line, and the empty line after the final newline, are places to type.
        res = _run(["complete", f"{f}:2:7"], env)
        assert res.returncode == 0, res.stderr
        res = _run(["complete", f"{f}:9:1"], env)
        assert res.returncode == 0, res.stderr
    prompts = [r.json["prompt"] for r in fake.requests if r.method == "POST"]
    assert prompts[0].startswith("<|fim_prefix|>x1 = 1\nx2 = 2<|fim_suffix|>\nx3 = 3\n")
    # After the whole file, with nothing below: all eight lines before the cursor
    # (the prompt's prefix and middle), nothing after it.
    before, after = fim_parts(prompts[1])
    assert after == "" and before.rstrip("\n") == "".join(
        f"x{i} = {i}\n" for i in range(1, 9)).rstrip("\n")


def test_complete_counts_a_file_without_final_newline(tmp_path) -> None:
    f = tmp_path / "two.py"
    f.write_text("a = 1\nb = 2", encoding="utf-8")
    res = _run(["complete", f"{f}:3:1"], openai_env(tmp_path, "http://127.0.0.1:9/v1"))
    assert res.returncode == 2 and "has only 2 lines; LINE must be 1 to 2" in res.stderr


def test_check_exits_non_zero_when_it_printed_a_problem(tmp_path) -> None:
    with FakeUpstream(Reply(text="a + b")) as fake:
        env = server_env(tmp_path, QWEN_LSP_PROVIDER="dashscope",
                         QWEN_LSP_BASE_URL=fake.openai_base)
        res = _run(["check"], env)
    assert "problem: provider is dashscope but no API key is set" in res.stdout
    assert "ok:" in res.stdout  # the endpoint answered; the problem still counts
    assert res.returncode == 2
    assert "1 problem" in res.stderr


def test_check_shows_the_model_the_local_engine_serves(tmp_path) -> None:
    gguf = tmp_path / "my-coder-q8.gguf"  # does not exist: the start fails after the report
    env = server_env(tmp_path, QWEN_LSP_PROVIDER="local", QWEN_LSP_MODEL_PATH=str(gguf))
    res = _run(["check"], env)
    assert res.returncode != 0
    assert '"model": "my-coder-q8.gguf"' in res.stdout
    assert "model: my-coder-q8.gguf (local engine)" in res.stdout
    assert "qwen3-coder-flash" not in res.stdout


def test_a_project_file_named_like_a_stdlib_module_does_not_replace_it(tmp_path) -> None:
    # Editors start `python -m qwen_lsp` in the project's folder; a project with
    # its own argparse.py (or json.py) must not be imported by the server.
    project = tmp_path / "proj"
    project.mkdir()
    for name in ("argparse.py", "json.py", "logging.py"):
        (project / name).write_text("raise SystemExit('the project file was imported')\n",
                                    encoding="utf-8")
    res = _run(["--help"], server_env(tmp_path), cwd=project)
    assert res.returncode == 0, res.stderr
    assert "imported" not in res.stderr + res.stdout
