"""Explicit context cache, cost accounting and rate limits, end to end.

The real server over stdio (pytest-lsp) against the loopback fake of
DashScope, which answers with the usage fields of both cache modes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.fake_upstream import FakeUpstream, Recorded, Reply, count_tokens
from tests.harness import inline, open_doc, server_env, start_client, stop_client

URI = "file:///work/proj/big.py"
KEY = "sk-test-cost-cache-0001"
EPHEMERAL = {"type": "ephemeral"}
# 160 lines of about 50 characters: a prefix well above 1,024 tokens.
LINES = [f"value_number_{i} = compute_something({i}, other={i * 2})" for i in range(160)]
DOC = "\n".join(LINES) + "\nresult = "


def _env(tmp: Path, base: str, **extra: str) -> dict[str, str]:
    return server_env(tmp, QWEN_LSP_PROVIDER="dashscope", QWEN_LSP_BASE_URL=base,
                      DASHSCOPE_API_KEY=KEY, QWEN_LSP_DEBOUNCE_MS="0",
                      QWEN_LSP_CONTEXT_TOKENS="3000", QWEN_LSP_MODEL="qwen3-coder-plus", **extra)


async def _command(client: LanguageClient, name: str) -> Any:
    return await client.workspace_execute_command_async(types.ExecuteCommandParams(command=name))


def _posts(fake: FakeUpstream) -> list[Recorded]:
    return [r for r in fake.requests if r.method == "POST"]


def _messages(rec: Recorded) -> list[dict[str, Any]]:
    body = rec.json
    return body["input"]["messages"] if "input" in body else body["messages"]


def _type(client: LanguageClient, version: int, line: int, col: int, text: str) -> None:
    at = types.Position(line=line, character=col)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=at, end=at), text=text)]))


def _check_layout(messages: list[dict[str, Any]], prefix_end: str) -> list[int]:
    """The block layout of a marked request; returns the marked user-block indexes."""
    system, user, assistant = messages
    assert system["role"] == "system" and len(system["content"]) == 1
    assert "cache_control" not in system["content"][0]
    assert user["role"] == "user"
    assert assistant == {"role": "assistant", "content": assistant["content"], "partial": True}
    blocks = user["content"]
    assert all(set(b) <= {"type", "text", "cache_control"} and b["type"] == "text"
               for b in blocks)
    marked = [i for i, b in enumerate(blocks) if "cache_control" in b]
    assert all(blocks[i]["cache_control"] == EPHEMERAL for i in marked)
    # The last chunk of the code before the cursor and the instruction after
    # it carry the markers (the vendor allows 4).
    assert marked == [len(blocks) - 2, len(blocks) - 1]
    head, *code, end = blocks
    assert head["text"].startswith("File: big.py (language: python)")
    assert "The cursor is at the end of the file." in head["text"]  # the code after it
    assert head["text"].endswith("the assistant message continues it up to the cursor:\n```\n")
    assert len(code) > 20 and all(c["text"].count("\n") == 4 for c in code)
    assert end["text"] == "```\n\nComplete only the rest of the current line."
    prefix = "".join(c["text"] for c in code) + assistant["content"]
    assert DOC.startswith(prefix.removesuffix(prefix_end)) and prefix.endswith(prefix_end)
    assert assistant["content"].count("\n") < 4  # the lines since the last whole chunk
    return marked


@pytest.mark.parametrize("api", ["openai", "dashscope"])
async def test_explicit_cache_bodies_usage_and_stats(tmp_path: Path, api: str) -> None:
    with FakeUpstream(Reply(text="42")) as fake:
        base = fake.openai_base if api == "openai" else fake.native_base
        client = await start_client(_env(tmp_path, base, QWEN_LSP_API=api))
        try:
            open_doc(client, URI, DOC)
            last = len(LINES)
            first = await inline(client, URI, last, len("result = "))
            assert fake.wait_until_finished()
            _type(client, 2, last, len("result = "), "7")  # not what was suggested
            second = await inline(client, URI, last, len("result = 7"))
            assert fake.wait_until_finished()
            stats = await _command(client, "qwen.stats")
        finally:
            await stop_client(client)
    assert first is not None and second is not None
    calls = _posts(fake)
    assert len(calls) == 2
    one, two = (_messages(r) for r in calls)
    marks = _check_layout(one, "result = ")
    assert _check_layout(two, "result = 7") == marks
    # Only the partial assistant message differs between the two requests.
    assert one[:2] == two[:2] and one[2] != two[2]
    created, hit = calls[0].bill, calls[1].bill
    # Everything up to the last marker (the fake counts tokens block by block).
    cached = sum(count_tokens(b["text"]) for m in one[:2] for b in m["content"])
    assert created["creation"] == cached and created["explicit"] == 0
    assert hit["explicit"] == cached and hit["creation"] == 0
    assert created["implicit"] == hit["implicit"] == 0
    usage = stats["usage"]["session"]
    assert usage["requests"] == 2
    assert usage["inputCacheCreation"] == created["creation"]
    assert usage["inputExplicitCached"] == hit["explicit"]
    assert usage["inputImplicitCached"] == 0
    standard = created["prompt"] - created["creation"] + hit["prompt"] - hit["explicit"]
    assert usage["inputStandard"] == standard
    assert usage["output"] == created["completion"] + hit["completion"]
    # qwen3-coder-plus, first tier: $1 per million input tokens, $5 output.
    expected = (standard + 1.25 * created["creation"] + 0.1 * hit["explicit"]
                + 5 * usage["output"]) / 1e6
    assert usage["currency"] == "USD"
    assert usage["estimatedCost"] == pytest.approx(expected, abs=1e-6)
    assert stats["usage"]["lastHour"] == usage
    assert stats["contextCache"]["mode"] == "policy"
    assert stats["contextCache"]["markedRequests"] == 2


async def test_implicit_setting_sends_the_plain_layout(tmp_path: Path) -> None:
    with FakeUpstream(Reply(text="42")) as fake:
        client = await start_client(_env(tmp_path, fake.openai_base,
                                         QWEN_LSP_CONTEXT_CACHE="implicit"))
        try:
            open_doc(client, URI, DOC)
            for n in range(2):
                _type(client, n + 2, len(LINES), len("result = ") + n, str(n))
                await inline(client, URI, len(LINES), len("result = ") + n + 1)
                assert fake.wait_until_finished()
            stats = await _command(client, "qwen.stats")
        finally:
            await stop_client(client)
    calls = _posts(fake)
    for rec in calls:
        assert all(isinstance(m["content"], str) for m in _messages(rec))
        assert b"cache_control" not in rec.body
    # The second prompt repeats the first one's start: the implicit cache.
    assert calls[1].bill["implicit"] > 1000 and calls[1].bill["explicit"] == 0
    usage = stats["usage"]["session"]
    assert usage["inputImplicitCached"] == calls[1].bill["implicit"]
    assert usage["inputExplicitCached"] == usage["inputCacheCreation"] == 0
    assert stats["contextCache"]["mode"] == "implicit"


async def test_manual_requests_during_a_429_make_one_call_per_window(tmp_path: Path) -> None:
    """VS Code's Alt+\\ or Helix's per-word requests are invoked (manual)
    completions: they must honour Retry-After like automatic ones."""
    doc = "".join(f"item_{i} = {i}\n" for i in range(12))
    states: list[tuple[str, str]] = []
    with FakeUpstream(Reply(status=429, headers={"Retry-After": "30"})) as fake:
        client = await start_client(_env(tmp_path, fake.openai_base))

        @client.feature("qwen/status")
        def on_status(params: Any) -> None:
            states.append((params.state, params.message))

        try:
            open_doc(client, URI, doc)
            results = [await inline(client, URI, i, len(f"item_{i} = {i}"), invoked=True)
                       for i in range(12)]
            stats = await _command(client, "qwen.stats")
        finally:
            await stop_client(client)
    assert results == [None] * 12
    assert len(_posts(fake)) == 1  # one call opened the window; none inside it
    assert stats["skippedBackoff"] == 11
    assert stats["upstream"]["state"] == "backoff"
    assert stats["upstream"]["message"].startswith("rate-limited, retrying in ")
    paused = [m for s, m in states if s == "paused"]
    assert paused and paused[0] in ("rate-limited, retrying in 30 s",
                                    "rate-limited, retrying in 29 s")
    # Status changes only when its text does, not once per request.
    assert len(paused) < 12


async def test_manual_requests_after_the_window_make_one_call_each_window(
        tmp_path: Path) -> None:
    doc = "".join(f"item_{i} = {i}\n" for i in range(12))
    with FakeUpstream(Reply(status=429, headers={"Retry-After": "1"})) as fake:
        client = await start_client(_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, doc)
            for i in range(4):
                await inline(client, URI, i, len(f"item_{i} = {i}"), invoked=True)
            assert len(_posts(fake)) == 1
            await asyncio.sleep(1.1)  # the window passes (a wait, not a timing assert)
            for i in range(4, 12):
                await inline(client, URI, i, len(f"item_{i} = {i}"), invoked=True)
        finally:
            await stop_client(client)
    # After the window one call finds the limit still there and opens the next.
    assert len(_posts(fake)) == 2


async def test_token_budget_holds_requests_back(tmp_path: Path) -> None:
    doc = "".join(f"item_{i} = {i}\n" for i in range(12))
    states: list[tuple[str, str]] = []
    with FakeUpstream(Reply(text="1")) as fake:
        # Each request takes about 40 tokens of prompt plus maxTokens 48.
        client = await start_client(_env(tmp_path, fake.openai_base,
                                         QWEN_LSP_MAX_TOKENS_PER_MINUTE="250"))

        @client.feature("qwen/status")
        def on_status(params: Any) -> None:
            states.append((params.state, params.message))

        try:
            open_doc(client, URI, doc)
            for i in range(8):
                await inline(client, URI, i, len(f"item_{i} = {i}"), invoked=True)
            stats = await _command(client, "qwen.stats")
        finally:
            await stop_client(client)
    sent = len(_posts(fake))
    assert 1 <= sent < 8
    assert stats["skippedBudget"] == 8 - sent
    # Reservations were corrected to the real usage, which may exceed them.
    assert stats["tokensLastMinute"] > 0
    assert any(s == "paused" and "maxTokensPerMinute (250) reached" in m for s, m in states)
