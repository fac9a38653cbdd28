"""Start the real qwen-lsp server over stdio with a pytest-lsp client.

The server runs as a subprocess exactly as an editor starts it; only the
Qwen cloud API is replaced, by tests/fake_upstream.py on loopback.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

ROOT = Path(__file__).resolve().parent.parent
SECRET_VARS = ("DASHSCOPE_API_KEY", "QWEN_LSP_API_KEY")


def server_env(tmp: Path, **overrides: str) -> dict[str, str]:
    """A clean environment: no user config, no real key, only what the test sets."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("QWEN_LSP_") and k not in SECRET_VARS}
    env["XDG_CONFIG_HOME"] = str(tmp / "config")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(overrides)
    return env


def openai_env(tmp: Path, base_url: str, **extra: str) -> dict[str, str]:
    return server_env(tmp, QWEN_LSP_PROVIDER="openai", QWEN_LSP_BASE_URL=base_url,
                      QWEN_LSP_DEBOUNCE_MS="0", **extra)


async def start_client(
    env: Mapping[str, str],
    *,
    capabilities: types.ClientCapabilities | str = "neovim@v0.11.0",
    client_name: str = "test-client",
    init_options: dict[str, Any] | None = None,
    root: Path | None = None,
    configuration: dict[str, Any] | None = None,
    notifications: Mapping[str, Callable[[Any], None]] | None = None,
) -> LanguageClient:
    """A started, initialized client; ``notifications`` (method -> handler) are
    registered before ``initialize``, so none sent right after it is missed."""
    config = ClientServerConfig(
        server_command=[sys.executable, "-m", "qwen_lsp"], server_env=dict(env)
    )
    client = await config.start()
    assert isinstance(client, LanguageClient)
    for method, handler in (notifications or {}).items():
        client.feature(method)(handler)
    if configuration is not None:
        client.set_configuration(configuration)
    caps = client_capabilities(capabilities) if isinstance(capabilities, str) else capabilities
    await client.initialize_session(
        types.InitializeParams(
            capabilities=caps,
            client_info=types.ClientInfo(name=client_name),
            initialization_options=init_options,
            root_uri=root.as_uri() if root else None,
        )
    )
    return client


async def stop_client(client: LanguageClient) -> None:
    try:
        await client.shutdown_session()
    finally:
        await client.stop()


def open_doc(client: LanguageClient, uri: str, text: str, language: str = "python",
             version: int = 1) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=language, version=version,
                                             text=text)))


async def inline(client: LanguageClient, uri: str, line: int, character: int,
                 invoked: bool = True) -> types.InlineCompletionList | None:
    """The suggestions at a position, or None when there are none.

    The server answers "nothing" as null or as an empty list (see
    ``inline_raw`` and test_core's test of the two); most tests only care
    that nothing is suggested.
    """
    result = await inline_raw(client, uri, line, character, invoked)
    if isinstance(result, types.InlineCompletionList) and not result.items:
        return None
    return result


async def inline_raw(client: LanguageClient, uri: str, line: int, character: int,
                     invoked: bool = True) -> Any:
    """The server's answer to an inline completion request, as it came."""
    kind = (types.InlineCompletionTriggerKind.Invoked if invoked
            else types.InlineCompletionTriggerKind.Automatic)
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=kind)))


async def complete(client: LanguageClient, uri: str, line: int, character: int,
                   invoked: bool = True) -> Any:
    ctx = types.CompletionContext(
        trigger_kind=types.CompletionTriggerKind.Invoked if invoked
        else types.CompletionTriggerKind.TriggerCharacter,
        trigger_character=None if invoked else ".")
    return await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character), context=ctx))


async def clear_cache(client: LanguageClient) -> None:
    """Empty the server's completion cache (``qwen.clearCache``)."""
    await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="qwen.clearCache"))


async def stats(client: LanguageClient) -> dict[str, Any]:
    """The server's ``qwen.stats`` (request counters, latencies)."""
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="qwen.stats"))


async def status(client: LanguageClient) -> dict[str, Any]:
    """The server's ``qwen.status`` (resolved settings, local engine)."""
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="qwen.status"))


async def reconfigure(client: LanguageClient, section: dict[str, Any],
                      applied: dict[str, Any] | None = None) -> None:
    """Change the client's ``qwen`` section and tell the server, which pulls it.

    With ``applied`` (camelCase setting -> value), wait until ``qwen.status``
    shows those values, i.e. the server has reloaded its settings.
    """
    client.set_configuration({"qwen": section})
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    if not applied:
        return
    for _ in range(500):
        settings = (await status(client))["settings"]
        if all(settings[key] == value for key, value in applied.items()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server never applied {applied}")
