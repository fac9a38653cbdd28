"""The request lifecycle through the real server: supersede, cancel, coalesce,
attach, typed-through cache. Every LSP request must get an answer, and every
abandoned upstream stream must be closed (the loopback upstream records
whether the client hung up before the response ended).

No wall-clock assertions: tests wait on observable events (the upstream
receiving a request) and assert on counts and texts.
"""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcRequestCancelled

from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import inline, open_doc, openai_env, reconfigure, start_client, stop_client

URI = "file:///work/proj/calc.py"
DOC = "def add(a, b):\n    \n"


def _posts(fake: FakeUpstream):
    return [r for r in fake.requests if r.method == "POST"]


def _params(line: int, character: int) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(
            trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )


def _type(client, version: int, line: int, character: int, text: str) -> None:
    pos = types.Position(line=line, character=character)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=pos, end=pos), text=text)]))


async def _wait(predicate, timeout: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


@pytest.fixture
def slow_upstream():
    # Streams forever until the client hangs up (bounded by the fake).
    with FakeUpstream(Reply(text="x", endless=True, token_delay=0.05)) as fake:
        yield fake


async def test_superseded_request_is_answered_and_its_stream_closed(tmp_path,
                                                                    slow_upstream) -> None:
    fake = slow_upstream
    client = await start_client(openai_env(tmp_path, fake.openai_base))
    try:
        open_doc(client, URI, DOC)
        first = asyncio.ensure_future(client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, _params(1, 4)))
        assert await _wait(lambda: len(_posts(fake)) == 1)
        fake.reply = Reply(text="return a + b")
        _type(client, 2, 1, 4, "z")
        second = await inline(client, URI, 1, 5, invoked=False)
        old = await asyncio.wait_for(first, 10)
        assert old is None or not old.items
        assert second is not None and second.items[0].insert_text == "return a + b"
        assert await _wait(lambda: _posts(fake)[0].finished is not None)
        assert _posts(fake)[0].aborted is True
        assert _posts(fake)[1].aborted is False
    finally:
        await stop_client(client)


async def test_cancel_request_closes_the_upstream_stream(tmp_path, slow_upstream) -> None:
    fake = slow_upstream
    client = await start_client(openai_env(tmp_path, fake.openai_base))
    try:
        open_doc(client, URI, DOC)
        fut = asyncio.ensure_future(client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, _params(1, 4), msg_id="cancel-me"))
        assert await _wait(lambda: len(_posts(fake)) == 1)
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
        with pytest.raises(JsonRpcRequestCancelled):
            await asyncio.wait_for(fut, 10)
        assert await _wait(lambda: _posts(fake)[0].finished is not None)
        assert _posts(fake)[0].aborted is True
        stats = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="qwen.stats"))
        assert stats["cancelled"] == 1
    finally:
        await stop_client(client)


async def test_identical_concurrent_requests_share_one_upstream_call(tmp_path) -> None:
    with FakeUpstream(Reply(text="return a + b", first_token_delay=0.3)) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            results = await asyncio.gather(*[
                client.protocol.send_request_async(
                    types.TEXT_DOCUMENT_INLINE_COMPLETION, _params(1, 4))
                for _ in range(3)
            ])
            stats = await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="qwen.stats"))
        finally:
            await stop_client(client)
    assert [r.items[0].insert_text for r in results] == ["return a + b"] * 3
    assert len(_posts(fake)) == 1
    assert stats["coalesced"] == 2


async def test_typed_through_is_served_from_cache(tmp_path) -> None:
    with FakeUpstream(Reply(text="return a + b")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            first = await inline(client, URI, 1, 4, invoked=False)
            assert first is not None and first.items[0].insert_text == "return a + b"
            answers = []
            for i, ch in enumerate("return a"):
                _type(client, 2 + i, 1, 4 + i, ch)
                res = await inline(client, URI, 1, 5 + i, invoked=False)
                answers.append(res.items[0].insert_text if res else None)
            stats = await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="qwen.stats"))
        finally:
            await stop_client(client)
    assert answers == ["eturn a + b", "turn a + b", "urn a + b", "rn a + b", "n a + b",
                       " a + b", "a + b", " + b"]
    assert len(_posts(fake)) == 1
    assert stats["typedThroughHits"] == 8


async def test_typing_what_the_stream_already_produced_attaches_to_it(tmp_path) -> None:
    reply = Reply(chunks=["return", " a", " +", " b"], token_delay=1.0)
    with FakeUpstream(reply) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            first = asyncio.ensure_future(client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, _params(1, 4)))
            assert await _wait(lambda: len(_posts(fake)) == 1)
            await asyncio.sleep(0.5)  # the first chunk ("return") has streamed
            _type(client, 2, 1, 4, "ret")
            second = await inline(client, URI, 1, 7, invoked=False)
            await asyncio.wait_for(first, 10)
            stats = await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="qwen.stats"))
        finally:
            await stop_client(client)
    assert second is not None and second.items[0].insert_text == "urn a + b"
    assert len(_posts(fake)) == 1
    assert stats["attached"] == 1


async def test_every_request_of_a_burst_is_answered(tmp_path) -> None:
    with FakeUpstream(Reply(text="return a + b", first_token_delay=0.05)) as fake:
        env = openai_env(tmp_path, fake.openai_base)
        env.pop("QWEN_LSP_DEBOUNCE_MS")  # adaptive debounce, like a real session
        client = await start_client(env)
        try:
            open_doc(client, URI, DOC)
            futures = []
            text = "value = compute(a, b)"
            for i, ch in enumerate(text):
                _type(client, 2 + i, 1, 4 + i, ch)
                futures.append(asyncio.ensure_future(client.protocol.send_request_async(
                    types.TEXT_DOCUMENT_INLINE_COMPLETION, _params(1, 5 + i))))
                await asyncio.sleep(0.01)
            results = await asyncio.wait_for(asyncio.gather(*futures), 30)
            stats = await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="qwen.stats"))
        finally:
            await stop_client(client)
    assert len(results) == len(text)
    # Each reached the engine, or was skipped because the next key had already
    # arrived and put its cursor inside a word (the editor moves on anyway).
    assert stats["requests"] + stats["skipped"] == len(text)
    # Superseded requests answer empty; the burst costs far fewer upstream calls.
    assert stats["upstreamRequests"] < len(text) / 2


async def test_nothing_to_suggest_is_remembered(tmp_path) -> None:
    """Asking again where the model had nothing costs no second upstream call."""
    with FakeUpstream(Reply(text="   \n")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            first = await inline(client, URI, 1, 4, invoked=False)
            again = await inline(client, URI, 1, 4, invoked=False)
            fake.reply = Reply(text="return a + b")
            _type(client, 2, 1, 4, "r")
            typed = await inline(client, URI, 1, 5, invoked=False)
        finally:
            await stop_client(client)
    assert first is None and again is None
    # A new context asks again.
    assert typed is not None and typed.items[0].insert_text == "return a + b"
    assert len(_posts(fake)) == 2


async def test_single_line_streams_end_at_the_newline_and_keep_the_connection(tmp_path) -> None:
    """Mid-line, the upstream stops at the newline by itself: nothing is closed
    early, usage is exact, and the next request reuses the connection."""
    doc = "def add(a, b):\n    total = \n    return total\n\nx = \n"
    with FakeUpstream(Reply(text="a + b\n    print(total)\n")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, doc)
            first = await inline(client, URI, 1, 12)
            second = await inline(client, URI, 4, 4)
            stats = await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="qwen.stats"))
        finally:
            await stop_client(client)
    assert [r.items[0].insert_text for r in (first, second)] == ["a + b", "a + b"]
    posts = _posts(fake)
    assert len(posts) == 2 and all("\n" in p.json["stop"] for p in posts)
    assert fake.wait_until_finished(5.0)
    assert not any(p.aborted for p in posts)
    assert posts[0].client_port == posts[1].client_port
    assert stats["estimatedUsage"] == 0 and stats["earlyStops"] == 0


async def _stats(client) -> dict:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="qwen.stats"))


async def test_a_block_that_arrives_at_once_is_not_cut_to_its_complete_lines(tmp_path) -> None:
    """A slow first token (prompt processing) does not trigger the early answer: the
    whole block arrives in one piece and is shown whole, its unterminated line too."""
    block = "\n    total = a + b\n    return total"
    reply = Reply(text=block, chunks=[block], first_token_delay=0.8)
    with FakeUpstream(reply) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            res = await inline(client, URI, 1, 4)
            stats = await _stats(client)
        finally:
            await stop_client(client)
    assert res is not None and res.items
    assert res.items[0].insert_text == "total = a + b\n    return total"
    assert stats["earlyAnswers"] == 0


async def test_a_slowly_streaming_block_is_answered_early_with_complete_lines(tmp_path) -> None:
    pieces = ["\n    total = a + b\n", "    total += 1\n", "    return total", " # done\n"]
    with FakeUpstream(Reply(chunks=pieces, token_delay=0.6)) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            res = await inline(client, URI, 1, 4)
            stats = await _stats(client)
        finally:
            await stop_client(client)
    assert res is not None and res.items
    shown = str(res.items[0].insert_text)
    assert shown.startswith("total = a + b") and "return total" not in shown
    assert stats["earlyAnswers"] == 1


async def test_a_window_of_another_size_at_the_same_place_shares_the_flight(tmp_path) -> None:
    """The local engine sizes each window by what it has computed, so a prefetch and
    the request that follows it can cut the same place differently: one upstream call."""
    doc = "".join(f"value_{i} = compute({i})\n" for i in range(300)) + "total = \n"
    with FakeUpstream(Reply(text="sum(values)", first_token_delay=1.0)) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, doc)
            first = asyncio.ensure_future(client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, _params(300, 8)))
            assert await _wait(lambda: len(_posts(fake)) == 1)
            await reconfigure(client, {"contextTokens": 256}, {"contextTokens": 256})
            second = await client.protocol.send_request_async(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, _params(300, 8))
            results = [await first, second]
            stats = await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="qwen.stats"))
        finally:
            await stop_client(client)
    assert [r.items[0].insert_text for r in results] == ["sum(values)"] * 2
    prompts = [p.json["prompt"] for p in _posts(fake)]
    assert len(prompts) == 1, [len(p) for p in prompts]
    assert stats["coalesced"] == 1 and stats["superseded"] == 0


async def test_the_next_line_offered_at_a_line_end_is_served_after_enter(tmp_path) -> None:
    # The model's answer at the end of a finished line starts with a line break:
    # the server offers the next line, and Enter (with the editor's indentation)
    # types through it, so the rest of that line is shown without asking again.
    doc = "def add(a, b):\n    total = a + b\n"
    with FakeUpstream(Reply(text="\n    return total\n")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, doc)
            at_end = await inline(client, URI, 1, 17, invoked=False)
            _type(client, 2, 1, 17, "\n    ")
            after_enter = await inline(client, URI, 2, 4, invoked=False)
        finally:
            await stop_client(client)
    assert at_end is not None and at_end.items[0].insert_text == "\n    return total"
    assert after_enter is not None and after_enter.items[0].insert_text == "return total"
    assert len(_posts(fake)) == 1
