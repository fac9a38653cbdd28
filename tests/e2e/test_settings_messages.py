"""When the server tells the user about problems in the settings.

Settings arrive in three steps: the server's own environment, then
``initializationOptions``, then the client's answer to
``workspace/configuration``. Judging them before the last step warns about a
setup that works (VS Code users set the backend in settings.json only). A
problem that later stops holding clears the ``qwen/status`` warning.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.harness import reconfigure, server_env, start_client, status, stop_client

# Without a key, provider "dashscope" is a problem; the editor's settings fix it.
BROKEN_ENV = {"QWEN_LSP_PROVIDER": "dashscope"}
NO_KEY = "provider is dashscope but no API key is set"


def _fixed(base: str) -> dict[str, Any]:
    return {"provider": "openai", "baseUrl": base}


def _status_log() -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """A list of the ``qwen/status`` (state, message) pairs, and the handler filling it."""
    states: list[tuple[str, str]] = []

    def on_status(params: Any) -> None:
        states.append((params.state, params.message))

    return states, {"qwen/status": on_status}


async def _settled(client: LanguageClient, provider: str) -> dict[str, Any]:
    """``qwen.status`` once the server has read the client's settings.

    The report of the problems follows the read in the same step, so once the
    settings show ``provider`` every message about them has been sent.
    """
    for _ in range(500):
        got = await status(client)
        if got["settings"]["provider"] == provider:
            await status(client)  # one more round trip for the notifications
            return got
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server never applied provider {provider!r}")


def _settings_messages(client: LanguageClient) -> list[str]:
    return [m.message for m in client.messages if "settings:" in m.message]


async def test_backend_set_only_in_workspace_configuration_shows_no_warning(
    tmp_path: Path,
) -> None:
    base = "http://127.0.0.1:9/compatible-mode/v1"
    states, handlers = _status_log()
    client = await start_client(
        server_env(tmp_path, **BROKEN_ENV),
        capabilities="visual-studio-code",
        configuration={"qwen": _fixed(base)},
        notifications=handlers,
    )
    try:
        got = await _settled(client, "openai")
    finally:
        await stop_client(client)
    assert got["problems"] == []
    assert _settings_messages(client) == []
    assert [s for s, _ in states if s != "ok"] == []


async def test_init_options_count_when_the_client_has_no_workspace_configuration(
    tmp_path: Path,
) -> None:
    caps = types.ClientCapabilities(workspace=types.WorkspaceClientCapabilities(
        configuration=False))
    base = "http://127.0.0.1:9/compatible-mode/v1"
    client = await start_client(server_env(tmp_path, **BROKEN_ENV), capabilities=caps,
                                init_options={"qwen": _fixed(base)})
    try:
        await _settled(client, "openai")
    finally:
        await stop_client(client)
    assert _settings_messages(client) == []


async def test_a_real_problem_is_reported_once_after_the_settings_are_read(
    tmp_path: Path,
) -> None:
    caps = types.ClientCapabilities(workspace=types.WorkspaceClientCapabilities(
        configuration=False))
    states, handlers = _status_log()
    client = await start_client(server_env(tmp_path, **BROKEN_ENV), capabilities=caps,
                                init_options={"qwen": {"model": "qwen3-coder-plus"}},
                                notifications=handlers)
    try:
        await _settled(client, "dashscope")
    finally:
        await stop_client(client)
    shown = _settings_messages(client)
    assert len(shown) == 1 and NO_KEY in shown[0]
    assert [s for s, _ in states] == ["warning"]


async def test_a_problem_that_no_longer_holds_clears_its_warning(tmp_path: Path) -> None:
    states, handlers = _status_log()
    client = await start_client(
        server_env(tmp_path, **BROKEN_ENV),
        capabilities="visual-studio-code",
        configuration={"qwen": {"model": "qwen3-coder-plus"}},
        notifications=handlers,
    )
    try:
        first = await _settled(client, "dashscope")
        await reconfigure(client, _fixed("http://127.0.0.1:9/compatible-mode/v1"),
                          applied={"provider": "openai"})
        second = await status(client)
        await status(client)
    finally:
        await stop_client(client)
    assert any(NO_KEY in p for p in first["problems"])
    assert second["problems"] == []
    assert [s for s, _ in states] == ["warning", "ok"]
    assert NO_KEY in states[0][1]
