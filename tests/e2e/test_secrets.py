"""The API key never leaves through any channel but the Authorization header.

Everything the server and the CLI emit is captured (stderr, window/logMessage,
window/showMessage, qwen/status notifications, qwen.stats, qwen.status, CLI
output) while the upstream succeeds, fails, echoes the key back in its error
body and disappears; the key must appear in none of it. The local engine's
loopback-only listener and per-start random key are covered by
tests/integration/test_local_engine.py (test_requests_without_the_key_are_refused,
test_engine_listens_on_loopback_only, test_key_is_kept_out_of_cmdline_describe_and_log).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types

from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import ROOT, inline, open_doc, server_env, start_client, stop_client

KEY = "sk-SECRETsecret0123456789abcdefXYZ"
URI = "file:///work/proj/s.py"
DOC = "".join(f"v{i} = {i}\n" for i in range(8))


def _dashscope_env(tmp: Path, base: str, **extra: str) -> dict[str, str]:
    return server_env(tmp, QWEN_LSP_PROVIDER="dashscope", QWEN_LSP_BASE_URL=base,
                      QWEN_LSP_DEBOUNCE_MS="0", QWEN_LSP_LOG_LEVEL="debug",
                      QWEN_LSP_TIMEOUT_MS="1500", **extra)


def _leaks(text: str) -> bool:
    # The whole key, or any long piece of its secret part.
    secret = KEY.removeprefix("sk-")
    return KEY in text or any(secret[i:i + 12] in text for i in range(len(secret) - 11))


@pytest.mark.parametrize("channel", ["env", "initializationOptions", "workspace"])
async def test_key_never_appears_in_output(channel: str, tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    extra = {"DASHSCOPE_API_KEY": KEY} if channel == "env" else {}
    init = {"apiKey": KEY} if channel == "initializationOptions" else None
    config = {"qwen": {"apiKey": KEY}} if channel == "workspace" else None
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}",
                      "type": "invalid_request_error", "code": "invalid_api_key"}}
    replies = [Reply(text="ok"), Reply(status=401, error=echo), Reply(status=403),
               Reply(status=500, error={"message": f"upstream saw key {KEY}"}),
               Reply(raw=f"data: {{bad {KEY}\n\n".encode()),
               Reply(text="late", first_token_delay=5.0)]
    captured: list[Any] = []
    with FakeUpstream(Reply(text="ok")) as fake:
        client = await start_client(_dashscope_env(tmp_path, fake.openai_base, **extra),
                                    init_options=init, configuration=config)
        try:
            open_doc(client, URI, DOC)
            for i, reply in enumerate(replies):
                fake.reply = reply
                await inline(client, URI, i, len(f"v{i} = {i}"))
            for command in ("qwen.stats", "qwen.status"):
                captured.append(await client.workspace_execute_command_async(
                    types.ExecuteCommandParams(command=command)))
            fake.stop()  # the upstream disappears
            await inline(client, URI, 7, 6)
            captured += [m.message for m in client.log_messages]
            captured += [m.message for m in client.messages]
        finally:
            await stop_client(client)
    out, err = capfd.readouterr()
    # The key really was in use: it reached the upstream, in the header only.
    auth = [r.headers.get("authorization") for r in fake.requests]
    assert auth and all(a == f"Bearer {KEY}" for a in auth)
    assert not any(_leaks(r.body.decode("utf-8", "replace")) for r in fake.requests)
    assert len(client.log_messages) >= 5
    everything = json.dumps(captured, ensure_ascii=False) + out + err
    assert not _leaks(everything), [c for c in captured if _leaks(json.dumps(c))]


async def test_key_is_not_sent_over_plain_http_to_another_host(tmp_path: Path) -> None:
    env = _dashscope_env(tmp_path, "http://qwen-proxy.invalid/compatible-mode/v1",
                         DASHSCOPE_API_KEY=KEY)
    client = await start_client(env)
    try:
        open_doc(client, URI, DOC)
        assert await inline(client, URI, 0, 6) is None
        shown = [m.message for m in client.messages]
        stats = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="qwen.stats"))
    finally:
        await stop_client(client)
    assert any("plain http" in m and "https://" in m for m in shown), shown
    # Refused before any connection attempt: a configuration error, not a DNS one.
    assert stats["errors"] == {"config": 1}


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "qwen_lsp", *args], env=env,
                          capture_output=True, timeout=60, cwd=str(ROOT), check=False)


def test_cli_output_never_shows_the_key(tmp_path: Path) -> None:
    src = tmp_path / "a.py"
    src.write_text("x = ")
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}",
                      "code": "invalid_api_key"}}
    with FakeUpstream(Reply(status=401, error=echo)) as fake:
        env = server_env(tmp_path, QWEN_LSP_PROVIDER="dashscope",
                         QWEN_LSP_BASE_URL=fake.openai_base, DASHSCOPE_API_KEY=KEY)
        runs = [_cli(["check"], env), _cli(["complete", f"{src}:1:5"], env)]
    assert len(fake.requests) == 2
    for proc in runs:
        assert proc.returncode == 2
        text = proc.stdout.decode() + proc.stderr.decode()
        assert "401" in text
        assert not _leaks(text), text
