"""The embedded local engine with the real model and llama.cpp server.

These run wherever llama-cpp-python is installed (CI included); the model is
assembled from the installed part packages on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
import pytest_asyncio

from qwen_lsp.providers.base import QWEN_SPECIAL_TOKENS
from qwen_lsp.providers.local import LocalEngine, LocalEngineError

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python is not installed (pip install -e '.[local]')",
    ),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
FIM_PROMPT = "<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n\nprint(add(1, 2))\n<|fim_middle|>"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine() -> AsyncIterator[LocalEngine]:
    shared = LocalEngine()
    await shared.ensure_started()
    yield shared
    await shared.stop()


async def stream_completion(base_url: str, key: str) -> str:
    body = {
        "prompt": FIM_PROMPT,
        "stream": True,
        "temperature": 0,
        "max_tokens": 16,
        "stop": list(QWEN_SPECIAL_TOKENS),
    }
    text = ""
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(trust_env=False, timeout=60.0) as client,
        client.stream("POST", f"{base_url}/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line.removeprefix("data:").strip()
            if payload == "[DONE]":
                break
            text += json.loads(payload)["choices"][0]["text"]
    return text


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_until(condition: object, attempts: int = 150, delay: float = 0.1) -> bool:
    """Poll a zero-argument callable a bounded number of times."""
    for _ in range(attempts):
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(delay)
    return bool(condition())  # type: ignore[operator]


async def test_fim_completion_fills_the_body(engine: LocalEngine) -> None:
    base_url, key = await engine.ensure_started()
    assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
    text = await stream_completion(base_url, key)
    assert "a + b" in text or "a+b" in text, text


async def test_a_second_try_forbids_the_token_the_copy_parts_at(engine: LocalEngine) -> None:
    """The engine's tokenizer names the token where a line parts from what came
    before, and forbidding that token id really changes the model's answer."""
    from qwen_lsp.providers.openai import OpenAICompatProvider

    base_url, key = await engine.ensure_started()
    provider = OpenAICompatProvider(base_url, key, "local", connect_timeout=5, read_timeout=60)
    head = "        self."
    prompt = ("<|fim_prefix|>class Reader:\n    def open(self, name):\n        self.name = name"
              "\n<|fim_suffix|>\n        return self\n<|fim_middle|>" + head)
    headers = {"Authorization": f"Bearer {key}"}

    async def answer(client: httpx.AsyncClient, extra: dict) -> str:
        body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "stop": ["\n"], **extra}
        res = await client.post(f"{base_url}/completions", json=body, headers=headers)
        return res.json()["choices"][0]["text"]

    try:
        async with httpx.AsyncClient(trust_env=False, timeout=60.0) as client:
            plain = await answer(client, {})
            assert plain.strip(), plain
            token = await provider.token_covering(head + plain, len(head))
            assert token is not None
            root = base_url.removesuffix("/v1")
            piece = (await client.post(f"{root}/extras/detokenize", json={"tokens": [token]},
                                       headers=headers)).json()["text"]
            assert plain.startswith(piece.lstrip(".")) or ("." + plain).startswith(piece), (
                piece, plain)
            banned = await answer(client, {"logit_bias": {str(token): -100.0}})
        assert not banned.startswith(piece.lstrip(".")), (plain, banned, piece)
    finally:
        await provider.aclose()


async def test_a_forbidden_answer_takes_the_token_its_stop_cut_off_with_it(
        engine: LocalEngine) -> None:
    """At ``try|:`` the model answered ``:`` (the code already there), written
    as the token ":\n" whose line break the engine's stop took away: forbidding
    the token of ":" alone left the model free to write the same again."""
    from qwen_lsp.context import build_context
    from qwen_lsp.engine import Engine, EngineConfig, _Flight, post_context
    from qwen_lsp.providers.openai import OpenAICompatProvider

    base_url, key = await engine.ensure_started()
    provider = OpenAICompatProvider(base_url, key, "local", connect_timeout=5, read_timeout=60)

    async def source() -> OpenAICompatProvider:
        return provider

    text = "def f(path):\n    try:\n        return open(path)\n    except OSError:\n        pass\n"
    ctx = build_context(text, text.index("try") + 3, uri="file:///f.py", path="f.py",
                        language="python", version=1, context_tokens=256, manual=True)
    completions = Engine(EngineConfig(second_tries=True, next_line=True), source)
    try:
        bias = await completions._forbidden(provider, ":", _Flight(ctx, post_context(ctx)),
                                            True, False)
        pieces = {await provider._detokenize([int(t)]) for t in bias}
        assert pieces == {":", ":\n"}, pieces
    finally:
        await completions.aclose()
        await provider.aclose()


async def test_the_token_that_covers_a_word_after_indentation_is_the_word(
        engine: LocalEngine) -> None:
    """Spaces glue to the word after them in Qwen's tokens ("   " + " while"):
    the token at the word's first letter is the word, not the indentation
    (tokenizing the text before it alone would name a run of spaces)."""
    from qwen_lsp.providers.openai import OpenAICompatProvider

    base_url, key = await engine.ensure_started()
    provider = OpenAICompatProvider(base_url, key, "local", connect_timeout=5, read_timeout=60)
    try:
        line = "        while frame:"
        token = await provider.token_covering(line, line.index("while"))
        alone = await provider.token_ids(line[: line.index("while")])
        async with httpx.AsyncClient(trust_env=False, timeout=60.0) as client:
            piece = (await client.post(f"{base_url.removesuffix('/v1')}/extras/detokenize",
                                       json={"tokens": [token]},
                                       headers={"Authorization": f"Bearer {key}"})).json()["text"]
    finally:
        await provider.aclose()
    assert piece.strip() == "while", piece
    assert alone is not None and token not in alone


async def test_requests_without_the_key_are_refused(engine: LocalEngine) -> None:
    base_url, key = await engine.ensure_started()
    async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
        body = {"prompt": FIM_PROMPT, "max_tokens": 4}
        no_key = await client.post(f"{base_url}/completions", json=body)
        wrong_key = await client.post(
            f"{base_url}/completions", json=body, headers={"Authorization": "Bearer nope"}
        )
        models = await client.get(f"{base_url}/models")
        good = await client.get(f"{base_url}/models", headers={"Authorization": f"Bearer {key}"})
    assert no_key.status_code == 401
    assert wrong_key.status_code == 401
    assert models.status_code == 401
    assert good.status_code == 200


async def test_child_listens_on_loopback_only(engine: LocalEngine) -> None:
    await engine.ensure_started()
    assert engine.pid is not None
    listening = [
        conn
        for conn in psutil.Process(engine.pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening, "the child has no listening socket"
    assert {conn.laddr.ip for conn in listening} == {"127.0.0.1"}
    assert engine.describe()["port"] in {conn.laddr.port for conn in listening}


async def test_key_is_kept_out_of_cmdline_describe_and_log(engine: LocalEngine) -> None:
    _, key = await engine.ensure_started()
    assert engine.pid is not None
    assert key not in " ".join(psutil.Process(engine.pid).cmdline())
    assert key not in json.dumps(engine.describe())
    assert key not in repr(engine)
    assert key not in engine.log_path.read_text(errors="replace")


async def test_concurrent_callers_share_one_start_and_stop_kills(engine: LocalEngine) -> None:
    own = LocalEngine()
    try:
        results = await asyncio.gather(*(own.ensure_started() for _ in range(3)))
        assert len(set(results)) == 1
        pid = own.pid
        assert pid is not None and own.state == "ready"
        assert [p for p in psutil.Process().children() if p.pid == pid]
    finally:
        await own.stop()
    assert own.state == "stopped" and own.pid is None
    assert process_gone(pid)


async def test_child_is_restarted_once_then_fails(engine: LocalEngine) -> None:
    own = LocalEngine()
    try:
        await own.ensure_started()
        first = own.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert await wait_until(lambda: own.pid not in (None, first) or own.state == "failed")
        base_url, key = await own.ensure_started()
        assert own.state == "ready" and own.describe()["restarts"] == 1
        assert "a + b" in await stream_completion(base_url, key)

        second = own.pid
        assert second is not None and second != first
        os.kill(second, signal.SIGKILL)
        assert await wait_until(lambda: own.state == "failed")
        assert own.last_error and "again" in own.last_error
        with pytest.raises(LocalEngineError):
            await own.ensure_started()
    finally:
        await own.stop()


async def test_child_dies_with_its_parent(engine: LocalEngine, tmp_path: Path) -> None:
    await engine.ensure_started()  # model assembled before the parent script runs
    script = tmp_path / "parent.py"
    script.write_text(
        "import asyncio\n"
        "from qwen_lsp.providers.local import LocalEngine\n"
        "async def main() -> None:\n"
        "    engine = LocalEngine()\n"
        "    await engine.ensure_started()\n"
        "    print(engine.pid, flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    parent = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE, env=env
    )
    child_pid: int | None = None
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), timeout=150)
        child_pid = int(line.decode().strip())
        child = psutil.Process(child_pid)
        assert child.ppid() == parent.pid
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
        assert await wait_until(lambda: process_gone(child_pid), attempts=100)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if child_pid is not None and not process_gone(child_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child_pid, signal.SIGKILL)


async def test_start_failure_is_reported_with_the_log_tail(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a gguf file" * 100)
    broken = LocalEngine(model_path=str(bogus))
    try:
        with pytest.raises(LocalEngineError) as info:
            await broken.ensure_started()
        assert "exited during start-up" in str(info.value)
        assert broken.state == "failed"
        assert broken.pid is None
    finally:
        await broken.stop()


async def test_missing_model_path_fails_without_starting(tmp_path: Path) -> None:
    missing = LocalEngine(model_path=str(tmp_path / "nope.gguf"))
    with pytest.raises(LocalEngineError, match="does not exist"):
        await missing.ensure_started()
    assert missing.state == "failed" and missing.pid is None


async def test_engine_starts_from_a_project_folder_that_shadows_stdlib_modules(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Editors start the server in the project's folder; the engine child must
    # not import the project's argparse.py (llama_cpp.server needs the real one).
    (tmp_path / "argparse.py").write_text("raise SystemExit('project argparse imported')\n",
                                          encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    own = LocalEngine()
    try:
        base_url, key = await own.ensure_started()
        assert "a + b" in await stream_completion(base_url, key)
    finally:
        await own.stop()
