"""Keys typed while the server starts still get a suggestion.

An editor queues what the user types until ``initialize`` is answered, then
sends it all at once: ``initialized``, ``didOpen``, a completion request and
the edits made after it. The request's document moves under it; at start-up
it is answered for the current text (later, such a stale answer is dropped,
because the editor asks again).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from tests.fake_upstream import FakeUpstream, Recorded, Reply, fim_parts
from tests.harness import open_doc, openai_env, stop_client


async def _start_without_initialized(env: dict[str, str], root: Path) -> LanguageClient:
    client = await ClientServerConfig(
        server_command=[sys.executable, "-m", "qwen_lsp"], server_env=env).start()
    assert isinstance(client, LanguageClient)
    client.set_configuration({"qwen": {}})
    caps = client_capabilities("visual-studio-code")
    # initialize_session() would send `initialized` by itself: the tests send
    # it together with what the editor queued.
    client.capabilities = caps
    await client.initialize_async(types.InitializeParams(
        capabilities=caps, client_info=types.ClientInfo(name="test-client"),
        root_uri=root.as_uri()))
    return client


def _request(client: LanguageClient, uri: str, line: int, character: int) -> asyncio.Future:
    """Send an automatic inline completion request now (not when first awaited)."""
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(
            trigger_kind=types.InlineCompletionTriggerKind.Automatic))
    # send_request writes at once; the *_async methods only when awaited.
    future = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params)
    return asyncio.wrap_future(future)


def _type(client: LanguageClient, uri: str, line: int, character: int, keys: str,
          version: int) -> int:
    """One didChange per key, inserted at (line, character) onwards; the last version."""
    for key in keys:
        version += 1
        at = types.Position(line=line, character=character)
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=at, end=at), text=key)]))
        character += 1
    return version


def _prefix(rec: Recorded) -> str:
    return fim_parts(rec.json["prompt"])[0]


async def test_a_request_queued_at_start_up_is_answered_for_the_current_text(
        tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    uri = (root / "calc.py").as_uri()
    with FakeUpstream(Reply(text="1, 2)")) as fake:
        client = await _start_without_initialized(
            openai_env(tmp_path, fake.openai_base), root)
        try:
            # What the editor queued while it waited, sent in one burst.
            client.initialized(types.InitializedParams())
            open_doc(client, uri, "def add(a, b):\n    return a + b\n\nx = ad\n")
            pending = _request(client, uri, 3, 6)  # after "x = ad"
            _type(client, uri, 3, 6, "d(", version=1)
            result = await asyncio.wait_for(pending, 30)
        finally:
            await stop_client(client)
    assert result is not None and result.items, "the start-up request got no answer"
    item = result.items[0]
    # At the cursor as it is now, after "x = add(", with the text after it.
    assert item.range.start == types.Position(line=3, character=8)
    assert item.insert_text == "1, 2)"
    assert _prefix(fake.requests[-1]).endswith("x = add(")


async def test_edits_during_the_first_flight_do_not_drop_it_but_later_ones_do(
        tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    uri = (root / "calc.py").as_uri()

    def reply(rec: Recorded) -> Reply:
        # Slow enough that the edits below arrive while it streams.
        slow = _prefix(rec).endswith(("x = ad", "y = su"))
        return Reply(text="1, 2)", first_token_delay=1.5 if slow else 0.0)

    with FakeUpstream(reply) as fake:
        client = await _start_without_initialized(
            openai_env(tmp_path, fake.openai_base), root)
        try:
            client.initialized(types.InitializedParams())
            open_doc(client, uri, "def add(a, b):\n    return a + b\n\nx = ad\ny = su\n")
            pending = _request(client, uri, 3, 6)
            assert await asyncio.to_thread(fake.wait_for_requests, 1, 30)
            version = _type(client, uri, 3, 6, "d(", version=1)
            first = await asyncio.wait_for(pending, 30)

            # Once the session has answered, the usual rule holds again: a
            # result for a text the editor has changed since is dropped.
            pending = _request(client, uri, 4, 6)  # after "y = su"
            assert await asyncio.to_thread(fake.wait_for_requests, 3, 30)
            _type(client, uri, 4, 6, "m", version=version)
            later = await asyncio.wait_for(pending, 30)
        finally:
            await stop_client(client)
    assert first is not None and first.items, "the first request was dropped as stale"
    assert first.items[0].range.start == types.Position(line=3, character=8)
    prefixes = [_prefix(r) for r in fake.requests]
    assert prefixes[0].endswith("x = ad") and prefixes[1].endswith("x = add(")
    assert later is None


async def test_a_client_that_never_sends_initialized_still_gets_completions(
        tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    uri = (root / "calc.py").as_uri()
    with FakeUpstream(Reply(text="1, 2)")) as fake:
        client = await _start_without_initialized(
            openai_env(tmp_path, fake.openai_base), root)
        try:
            open_doc(client, uri, "x = add(\n")
            result = await asyncio.wait_for(_request(client, uri, 0, 8), 30)
        finally:
            await stop_client(client)
    assert result is not None and result.items[0].insert_text == "1, 2)"
