"""End to end: the real server over stdio against the loopback Qwen API.

Covers the three protocol/mode combinations, both LSP completion methods,
the exact request bodies the upstream receives, settings channels, stats,
and position encodings on non-ASCII lines.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from lsprotocol import types

from tests.fake_upstream import FakeUpstream, Reply, fim_parts
from tests.harness import (
    complete,
    inline,
    inline_raw,
    open_doc,
    openai_env,
    reconfigure,
    server_env,
    start_client,
    stop_client,
)

SPECIALS = [
    "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<|im_start|>", "<|im_end|>",
]
DOC = "def add(a, b):\n    return \n\nprint(add(1, 2))\n"
URI = "file:///work/proj/calc.py"


def _modes(fake: FakeUpstream, tmp_path):
    return {
        "fim": openai_env(tmp_path, fake.openai_base, QWEN_LSP_MODEL="qwen2.5-coder-7b-instruct"),
        "partial-openai": server_env(
            tmp_path, QWEN_LSP_PROVIDER="dashscope", QWEN_LSP_API="openai",
            QWEN_LSP_BASE_URL=fake.openai_base, DASHSCOPE_API_KEY="sk-test-core-0001",
            QWEN_LSP_DEBOUNCE_MS="0"),
        "partial-native": server_env(
            tmp_path, QWEN_LSP_PROVIDER="dashscope", QWEN_LSP_API="dashscope",
            QWEN_LSP_BASE_URL=fake.native_base, DASHSCOPE_API_KEY="sk-test-core-0001",
            QWEN_LSP_DEBOUNCE_MS="0"),
    }


@pytest.mark.parametrize("mode", ["fim", "partial-openai", "partial-native"])
async def test_inline_and_completion_each_protocol(mode: str, tmp_path) -> None:
    with FakeUpstream(Reply(text="a + b")) as fake:
        env = _modes(fake, tmp_path)[mode]
        client = await start_client(env)
        try:
            open_doc(client, URI, DOC)
            res = await inline(client, URI, 1, 11)
            assert res is not None and [i.insert_text for i in res.items] == ["a + b"]
            assert res.items[0].range == types.Range(
                start=types.Position(1, 11), end=types.Position(1, 11))

            # A different position so the cache does not answer the second one.
            fake.set_text("a - b")
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(start=types.Position(1, 11), end=types.Position(1, 11)),
                    text=" ")]))
            comp = await complete(client, URI, 1, 12)
            assert comp is not None and len(comp.items) == 1
            item = comp.items[0]
            assert item.text_edit.new_text == "a - b"
            assert "\n" not in item.label
        finally:
            await stop_client(client)

    posts = [r for r in fake.requests if r.method == "POST"]
    assert len(posts) == 2
    first = posts[0]
    body = first.json
    if mode == "fim":
        assert first.path == "/compatible-mode/v1/completions"
        assert body["model"] == "qwen2.5-coder-7b-instruct"
        assert body["prompt"] == (
            "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n"
            "<|fim_middle|>"
        )
        assert body["stream"] is True
        assert body["stop"][: len(SPECIALS)] == SPECIALS
        assert "authorization" not in first.headers
    else:
        msgs = body["messages"] if mode == "partial-openai" else body["input"]["messages"]
        last = msgs[-1]
        assert last == {"role": "assistant", "content": "def add(a, b):\n    return ",
                        "partial": True}
        assert "calc.py" in msgs[-2]["content"] and "print(add(1, 2))" in msgs[-2]["content"]
        assert first.headers["authorization"] == "Bearer sk-test-core-0001"
        if mode == "partial-openai":
            assert first.path == "/compatible-mode/v1/chat/completions"
            assert body["model"] == "qwen3-coder-flash"
            assert body["stream"] is True
            assert body["stream_options"] == {"include_usage": True}
        else:
            assert first.path == "/api/v1/services/aigc/text-generation/generation"
            assert first.headers["x-dashscope-sse"] == "enable"
            assert body["parameters"]["result_format"] == "message"
            assert body["parameters"]["incremental_output"] is True


async def test_stats_report_usage_and_cache(tmp_path) -> None:
    with FakeUpstream(Reply(text="a + b", usage={"prompt_tokens": 300, "completion_tokens": 4,
                                                 "cached_tokens": 256})) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            await inline(client, URI, 1, 11)
            again = await inline(client, URI, 1, 11)  # exact cache hit
            assert again is not None and again.items[0].insert_text == "a + b"
            stats = await client.workspace_execute_command_async(
                types.ExecuteCommandParams(command="qwen.stats"))
        finally:
            await stop_client(client)
    assert stats["requests"] == 2
    assert stats["upstreamRequests"] == 1
    assert stats["cacheHits"] == 1
    assert stats["promptTokens"] == 300
    assert stats["completionTokens"] == 4
    assert stats["cachedTokens"] == 256
    assert stats["latencyMs"]["p50"] is not None
    assert len([r for r in fake.requests if r.method == "POST"]) == 1


async def test_settings_from_initialization_options_and_configuration(tmp_path) -> None:
    with FakeUpstream(Reply(text="a + b")) as fake:
        env = server_env(tmp_path, QWEN_LSP_MODEL="from-env")
        client = await start_client(
            env,
            init_options={"provider": "openai", "baseUrl": fake.openai_base,
                          "model": "from-init", "debounceMs": 0},
            configuration={"qwen": {"model": "from-workspace", "maxTokens": 33}},
        )
        try:
            open_doc(client, URI, DOC)
            await inline(client, URI, 1, 11)
        finally:
            await stop_client(client)
    body = next(r for r in fake.requests if r.method == "POST").json
    assert body["model"] == "from-workspace"
    assert body["max_tokens"] == 33


async def test_changed_settings_drop_cached_suggestions(tmp_path) -> None:
    """A suggestion cached under one model is not served after switching to another;
    a configuration change that changes nothing keeps the cache."""
    replies = {"first": "a + b", "second": "b + a"}
    with FakeUpstream(lambda rec: Reply(text=replies[rec.json["model"]])) as fake:
        section = {"provider": "openai", "baseUrl": fake.openai_base, "debounceMs": 0,
                   "model": "first"}
        client = await start_client(server_env(tmp_path), configuration={"qwen": section})
        try:
            open_doc(client, URI, DOC)
            first = await inline(client, URI, 1, 11)
            await reconfigure(client, section, {"model": "first"})  # no change: still cached
            cached = await inline(client, URI, 1, 11)
            calls_before_switch = len([r for r in fake.requests if r.method == "POST"])
            await reconfigure(client, {**section, "model": "second"}, {"model": "second"})
            second = await inline(client, URI, 1, 11)
        finally:
            await stop_client(client)
    texts = [r.items[0].insert_text for r in (first, cached, second)]
    assert texts == ["a + b", "a + b", "b + a"]
    posts = [r.json["model"] for r in fake.requests if r.method == "POST"]
    assert calls_before_switch == 1 and posts == ["first", "second"]


async def test_disabled_languages_and_the_enabled_switch(tmp_path) -> None:
    """No completion and no upstream call in a disabled language or while
    disabled; turning it back on in the editor resumes completions."""
    md_uri = "file:///work/proj/notes.md"
    with FakeUpstream(Reply(text="a + b")) as fake:
        section = {"provider": "openai", "baseUrl": fake.openai_base, "debounceMs": 0,
                   "disabledLanguages": ["markdown"], "enabled": False}
        client = await start_client(server_env(tmp_path), configuration={"qwen": section})
        try:
            open_doc(client, URI, DOC)
            open_doc(client, md_uri, "Sum: def add(a, b): return ", language="markdown")
            off = [await inline(client, URI, 1, 11), await complete(client, URI, 1, 11)]
            calls_while_off = len(fake.requests)
            await reconfigure(client, {**section, "enabled": True}, {"enabled": True})
            python = await inline(client, URI, 1, 11)
            markdown = [await inline(client, md_uri, 0, 27), await complete(client, md_uri, 0, 27)]
        finally:
            await stop_client(client)
    assert calls_while_off == 0
    assert all(r is None or not _items(r) for r in off), off
    assert python is not None and python.items[0].insert_text == "a + b"
    assert all(r is None or not _items(r) for r in markdown), markdown
    assert len([r for r in fake.requests if r.method == "POST"]) == 1


async def test_invalid_setting_gives_one_message_and_keeps_working(tmp_path) -> None:
    with FakeUpstream(Reply(text="a + b")) as fake:
        client = await start_client(
            openai_env(tmp_path, fake.openai_base),
            init_options={"temperature": "hot", "maxTokens": -4},
        )
        try:
            open_doc(client, URI, DOC)
            res = await inline(client, URI, 2, 0)  # blank line: multi-line, full maxTokens
            assert res is not None and res.items[0].insert_text == "a + b"
            shown = [m.message for m in client.messages]
        finally:
            await stop_client(client)
    body = next(r for r in fake.requests if r.method == "POST").json
    assert body["max_tokens"] == 128 and body["temperature"] == 0.0
    settings_msgs = [m for m in shown if "temperature" in m]
    assert len(settings_msgs) == 1 and "maxTokens" in settings_msgs[0]


@pytest.mark.parametrize(
    ("encoding", "character"),
    # Line 1 is '    s = "héllo 😀 " + ' : the cursor sits at its end.
    [("utf-8", 25), ("utf-16", 22), ("utf-32", 21)],
)
async def test_position_encodings_on_non_ascii_lines(encoding: str, character: int,
                                                     tmp_path) -> None:
    text = 'def greet():\n    s = "héllo 😀 " + \n    return s\n'
    caps = types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=[encoding]),
        text_document=types.TextDocumentClientCapabilities(
            completion=types.CompletionClientCapabilities(
                completion_item=types.ClientCompletionItemOptions(snippet_support=False))),
    )
    with FakeUpstream(Reply(text='"wörld" 🌍')) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base), capabilities=caps)
        try:
            assert client.capabilities is not None
            open_doc(client, URI, text)
            res = await inline(client, URI, 1, character)
            comp = await complete(client, URI, 1, character)
        finally:
            await stop_client(client)
    prompt = next(r for r in fake.requests if r.method == "POST").json["prompt"]
    assert prompt.startswith('<|fim_prefix|>def greet():\n    s = "héllo 😀 " + <|fim_suffix|>')
    assert res is not None and res.items[0].insert_text == '"wörld" 🌍'
    pos = types.Position(1, character)
    assert res.items[0].range == types.Range(start=pos, end=pos)
    assert comp.items[0].text_edit.range == types.Range(start=pos, end=pos)


async def test_edits_in_each_encoding_keep_the_text_exact(tmp_path) -> None:
    """An incremental edit after an astral character lands where the client meant."""
    for encoding, col in (("utf-8", 11), ("utf-16", 8), ("utf-32", 7)):
        caps = types.ClientCapabilities(
            general=types.GeneralClientCapabilities(position_encodings=[encoding]))
        with FakeUpstream(Reply(text="ok")) as fake:
            client = await start_client(openai_env(tmp_path, fake.openai_base),
                                        capabilities=caps)
            try:
                open_doc(client, URI, "x = '😀é'\n")
                client.text_document_did_change(types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
                    content_changes=[types.TextDocumentContentChangePartial(
                        range=types.Range(start=types.Position(0, col),
                                          end=types.Position(0, col)),
                        text="Z")]))
                await inline(client, URI, 1, 0)
            finally:
                await stop_client(client)
        prompt = next(r for r in fake.requests if r.method == "POST").json["prompt"]
        assert prompt.startswith("<|fim_prefix|>x = '😀éZ'<|fim_suffix|>"), (encoding, prompt)


async def test_unknown_document_and_bad_positions_answer_empty(tmp_path) -> None:
    with FakeUpstream(Reply(text="zzz")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            assert await inline(client, "file:///nope.py", 0, 0) is None
            open_doc(client, URI, DOC)
            assert await inline(client, URI, 99, 0) is None
            comp = await complete(client, URI, 99, 0)
            assert not comp.items
        finally:
            await stop_client(client)
    assert [r for r in fake.requests if r.method == "POST"] == []


async def test_nothing_to_suggest_is_an_empty_list_unless_the_text_moved_on(tmp_path) -> None:
    """Neovim 0.12 keeps its last ghost text until a list replaces it: "nothing
    here" must be an empty list. An answer for a text the editor has changed
    since says nothing about the text now: null, which leaves the editor's
    state alone."""

    def reply(request) -> Reply:
        before = fim_parts(str((request.json or {}).get("prompt", "")))[0]
        # At the end of "    return" (where a key is typed meanwhile): a slow answer.
        if not before.endswith("))"):
            return Reply(text="a + b", first_token_delay=1.5)
        return Reply(text="")

    with FakeUpstream(reply) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            nothing = await inline_raw(client, URI, 3, 16)  # the model answers ""
            assert isinstance(nothing, types.InlineCompletionList), nothing
            assert list(nothing.items) == []
            pending = asyncio.create_task(inline_raw(client, URI, 1, 11))
            for _ in range(200):
                if sum(1 for r in fake.requests if r.method == "POST") == 2:
                    break
                await asyncio.sleep(0.05)
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(start=types.Position(1, 11), end=types.Position(1, 11)),
                    text="x")]))
            assert await pending is None
        finally:
            await stop_client(client)
    assert sum(1 for r in fake.requests if r.method == "POST") == 2


def test_stats_snapshot_is_json() -> None:
    from qwen_lsp.stats import Stats

    s = Stats()
    s.record_answer(0.01, hit=False)
    assert json.loads(json.dumps(s.snapshot()))["latencyMs"]["p50"] == 10.0


def _items(result: object) -> list:
    """Items of an inline or completion answer (list or CompletionList)."""
    if isinstance(result, list):
        return result
    return list(getattr(result, "items", None) or [])


async def test_cursor_notifications_and_edits_tell_the_server_where_the_user_is(tmp_path) -> None:
    """qwen/cursor (sent by editors/vscode and editors/nvim) and edits move the place
    the local engine warms up; a malformed notification changes nothing."""
    from tests.harness import status

    uri = "file:///work/proj/place.py"
    client = await start_client(openai_env(tmp_path, "http://127.0.0.1:9/v1"))
    try:
        open_doc(client, uri, "x = 1\ny = 'héllo'\n")
        opened = (await status(client))["place"]
        client.protocol.notify("qwen/cursor", {"textDocument": {"uri": uri},
                                               "position": {"line": 1, "character": 5}})
        moved = (await status(client))["place"]
        client.protocol.notify("qwen/cursor", {"textDocument": {"uri": uri}, "position": "x"})
        client.protocol.notify("qwen/cursor", {"textDocument": {"uri": "file:///nope.py"},
                                               "position": {"line": 0, "character": 0}})
        ignored = (await status(client))["place"]
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(line=0, character=5),
                                  end=types.Position(line=0, character=5)), text="00")]))
        edited = (await status(client))["place"]
    finally:
        await stop_client(client)
    assert opened == {"uri": uri, "offset": 0}
    assert moved == {"uri": uri, "offset": 6 + 5}
    assert ignored == moved
    assert edited == {"uri": uri, "offset": 7}  # after the inserted "00"


async def test_blank_line_inside_a_block_of_a_long_file(tmp_path) -> None:
    """The cursor's block goes after <|fim_middle|>; at a blank line it ends with
    the newline, the model writes the line, and the editor gets it at the cursor."""
    lines = [f"    total += item_{i}" for i in range(60)]
    lines[0] = "def run(items):"
    lines[1] = "    total = 0"
    lines[43] = "    "  # the blank cursor line (line 43: 3 lines into its block)
    doc = "\n".join(lines) + "\n    return total\n"
    with FakeUpstream(Reply(text="    print(total)\n")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, doc)
            res = await inline(client, URI, 43, 4)
            assert res is not None and [i.insert_text for i in res.items] == ["print(total)"]
        finally:
            await stop_client(client)
    prompt = next(r for r in fake.requests if r.method == "POST").json["prompt"]
    prefix, _, rest = prompt.partition("<|fim_suffix|>")
    suffix, _, middle = rest.partition("<|fim_middle|>")
    # The code above the cursor, split at a line start a few lines up; the
    # middle ends with the newline before the blank line.
    assert (prefix + middle).endswith("\n".join(lines[:43]) + "\n")
    assert middle.endswith(lines[42] + "\n") and prefix.endswith("\n")
    assert 1 <= middle.count("\n") <= 16
    assert suffix.startswith("\n" + lines[44] + "\n")


async def test_a_rewrite_of_the_rest_of_the_line_replaces_it_as_ghost_text_only(
        tmp_path) -> None:
    """Mid-line, the model's own version of the rest of the line replaces it: an
    inline item whose range runs to the end of the line. The completion menu
    gets no item for it (Neovim's omnifunc inserted such an item in front of the
    code it was to replace)."""
    doc = "def total(items):\n    return sum(item.price for item in items)\n"
    rest = "item.price for item in items)"
    with FakeUpstream(Reply(text="p.price for p in items)")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, doc)
            at = doc.split("\n")[1].index(rest)
            res = await inline(client, URI, 1, at)
            assert res is not None and [i.insert_text for i in res.items] == [
                "p.price for p in items)"]
            assert res.items[0].range == types.Range(
                start=types.Position(1, at), end=types.Position(1, at + len(rest)))
            comp = await complete(client, URI, 1, at)
            assert comp is not None and not comp.items
        finally:
            await stop_client(client)
