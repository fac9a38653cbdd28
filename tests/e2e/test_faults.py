"""Upstream faults, end to end: the real server over stdio against a misbehaving
loopback upstream.

Every fault must end in an empty answer (never a hang or a JSON-RPC error),
be classified in ``qwen.stats``, be explained once in ``window/showMessage``
and every time in ``window/logMessage``; rate limits and repeated failures
pause upstream calls, and the pause ends by itself.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.fake_upstream import FakeUpstream, Reply, error_body
from tests.harness import inline, open_doc, openai_env, server_env, start_client, stop_client

URI = "file:///work/proj/faults.py"
OTHER = "file:///work/proj/other.py"
# Ten short lines; a cursor at the end of line i is a fresh context for each i.
DOC = "".join(f"value_{i} = {i}\n" for i in range(10))
# Responses close their connection so that stopping the fake really cuts the
# server off (no idle keep-alive connection survives the stop).
CLOSE = {"Connection": "close"}


def _line_end(i: int) -> int:
    return len(f"value_{i} = {i}")


async def _stats(client: LanguageClient) -> dict[str, Any]:
    return await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="qwen.stats"))


def _posts(fake: FakeUpstream) -> int:
    return len([r for r in fake.requests if r.method == "POST"])


def _texts(res: types.InlineCompletionList | None) -> list[str]:
    return [] if res is None else [str(i.insert_text) for i in res.items]


# (id, reply, error kind in qwen.stats, words the logged message must contain)
HTTP_FAULTS: list[tuple[str, Reply, str, tuple[str, ...]]] = [
    ("400", Reply(status=400, error=error_body(400, False, "max_tokens must be at most 8192")),
     "bad_request", ("HTTP 400", "max_tokens must be at most 8192")),
    ("401", Reply(status=401), "auth", ("HTTP 401", "API key", "region")),
    ("403", Reply(status=403), "auth", ("HTTP 403", "API key", "region")),
    ("404", Reply(status=404), "not_found", ("HTTP 404", "model")),
    ("429", Reply(status=429, headers={"Retry-After": "0"}), "rate_limited", ("HTTP 429",)),
    ("500", Reply(status=500), "server", ("HTTP 500",)),
    ("502", Reply(status=502, error={"message": "bad gateway"}), "server", ("HTTP 502",)),
    ("503", Reply(status=503), "server", ("HTTP 503",)),
    ("malformed-sse", Reply(raw=b"data: {\"choices\": [\n\n"), "protocol", ("Malformed JSON",)),
    ("malformed-json", Reply(raw=b"{\"choices\": ", content_type="application/json"),
     "protocol", ("Malformed JSON",)),
    ("wrong-content-type", Reply(raw=b"<html><body>portal</body></html>",
                                 content_type="text/html"), "protocol", ("text/html",)),
    ("oversized", Reply(raw=b"data: " + b"x" * 3_000_000 + b"\n\n"), "protocol",
     ("exceeded",)),
    ("cut-mid-stream", Reply(text="alpha beta gamma delta", cut_after=2), "protocol",
     ("Connection lost",)),
]


async def test_each_http_fault_answers_empty_and_is_explained(tmp_path: Path) -> None:
    """One server meets every HTTP-level fault in turn and keeps working.

    Manual (invoked) requests are used because they bypass the pause that
    repeated failures impose, so every fault reaches the upstream; they honour
    a rate limit, so the 429 here says Retry-After: 0.
    """
    with FakeUpstream(Reply(text="ok")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            seen: dict[str, int] = {}
            for n, (name, reply, kind, words) in enumerate(HTTP_FAULTS):
                fake.reply = reply
                logs_before = len(client.log_messages)
                posts_before = _posts(fake)
                # A fresh position each time so the cache never answers.
                line = n % 10
                fake.reset_cache()
                res = await inline(client, URI, line, _line_end(line))
                if name == "cut-mid-stream":
                    # The text streamed before the cut is still usable.
                    assert _texts(res) in ([], ["alpha"]), (name, res)
                else:
                    assert res is None, (name, res)
                assert _posts(fake) == posts_before + 1, name
                logged = " ".join(m.message for m in client.log_messages[logs_before:])
                for word in words:
                    assert word in logged, (name, word, logged)
                seen[kind] = seen.get(kind, 0) + 1
                stats = await _stats(client)
                assert stats["errors"] == seen, name
                # Change the document between faults so no answer is reused.
                client.text_document_did_change(types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=n + 2),
                    content_changes=[types.TextDocumentContentChangeWholeDocument(
                        text=DOC + f"# fault {n}\n")]))

            # Afterwards a good answer comes through at once.
            fake.reply = Reply(text="99")
            res = await inline(client, URI, 9, _line_end(9))
            assert _texts(res) == ["99"]
            shown = [m.message for m in client.messages]
        finally:
            await stop_client(client)
    # One message per kind of problem, however often it happened.
    kinds_shown = {"bad_request": "HTTP 400", "auth": "HTTP 401", "not_found": "HTTP 404",
                   "rate_limited": "HTTP 429", "server": "HTTP 500", "protocol": "Malformed"}
    for kind, word in kinds_shown.items():
        assert len([m for m in shown if word in m]) == 1, (kind, shown)
    assert not [m for m in shown if "HTTP 403" in m or "HTTP 502" in m], shown
    # The oversized body was not read to its end: the server hung up early.
    assert fake.wait_until_finished()


async def test_endless_stream_is_stopped_and_the_connection_closed(tmp_path: Path) -> None:
    with FakeUpstream(Reply(text="tick ", endless=True)) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            res = await inline(client, URI, 0, _line_end(0))
            assert fake.wait_until_finished(10.0)
        finally:
            await stop_client(client)
    rec = next(r for r in fake.requests if r.method == "POST")
    # Either the stop rules or the byte cap ended it; the upstream saw the hang-up.
    assert rec.aborted
    assert res is None or all(len(t) < 2000 for t in _texts(res))


async def test_silent_upstream_is_timeboxed_and_reported(tmp_path: Path) -> None:
    """No first byte within timeoutMs: an empty answer and a time-out in the stats and
    the status; one message per session, and only once time-outs persist (3 in a row)."""
    with FakeUpstream(Reply(text="late", first_token_delay=30.0)) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base,
                                               QWEN_LSP_TIMEOUT_MS="400"))
        try:
            open_doc(client, URI, DOC)
            res = await inline(client, URI, 0, _line_end(0))
            shown_after_one = [m.message for m in client.messages]
            for i in (1, 2, 3):
                assert await inline(client, URI, i, _line_end(i)) is None
            stats = await _stats(client)
            assert fake.wait_until_finished(10.0)
            shown = [m.message for m in client.messages]
            logged = [m.message for m in client.log_messages if "timeoutMs" in m.message]
        finally:
            await stop_client(client)
    assert res is None
    assert stats["errors"].get("timeout") == 4
    assert shown_after_one == []  # one slow answer interrupts nobody
    assert len(logged) >= 4  # but each one is logged
    assert len(shown) == 1 and "timed out" in shown[0] and "timeoutMs" in shown[0], shown
    # The hung request was abandoned, not left open.
    assert next(r for r in fake.requests if r.method == "POST").aborted


async def test_cut_off_answer_is_not_remembered_as_nothing(tmp_path: Path) -> None:
    """The time box ends after the first piece: asking again at the same place asks
    the upstream again (neither "nothing here" nor the cut-off piece is cached)."""
    reply = Reply(chunks=["  # par", "tial\n", "more\n"], token_delay=5.0)
    with FakeUpstream(reply) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base,
                                               QWEN_LSP_TIMEOUT_MS="400"))
        try:
            open_doc(client, URI, DOC)
            await inline(client, URI, 0, _line_end(0))
            assert fake.wait_until_finished(20.0)  # the fake's pause notices the abort
            await inline(client, URI, 0, _line_end(0))
            stats = await _stats(client)
            assert fake.wait_until_finished(20.0)
        finally:
            await stop_client(client)
    # Both went upstream: the second was not answered from the cache.
    assert stats["upstreamRequests"] == 2 and stats.get("cacheHits", 0) == 0
    assert stats["timeboxed"] == 2


@contextmanager
def _refusing_port() -> Iterator[int]:
    """A loopback port nobody listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    yield port


@contextmanager
def _blackhole_port() -> Iterator[int]:
    """A loopback port whose accept queue is full, so a connect never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(c)
    try:
        yield port
    finally:
        for c in fillers:
            c.close()
        listener.close()


@pytest.mark.parametrize("fault", ["refused", "dns", "connect-timeout"])
async def test_unreachable_upstream(fault: str, tmp_path: Path) -> None:
    @contextmanager
    def base() -> Iterator[str]:
        if fault == "dns":
            # .invalid never resolves (RFC 6761); no key, so plain http is allowed.
            yield "http://qwen-upstream.invalid/compatible-mode/v1"
            return
        ctx = _refusing_port() if fault == "refused" else _blackhole_port()
        with ctx as port:
            yield f"http://127.0.0.1:{port}/compatible-mode/v1"

    expected = {"refused": ("connect", "Cannot connect"), "dns": ("connect", "Cannot connect"),
                "connect-timeout": ("timeout", "Timed out connecting")}[fault]
    with base() as url:
        client = await start_client(openai_env(tmp_path, url,
                                               QWEN_LSP_CONNECT_TIMEOUT_MS="300"))
        try:
            open_doc(client, URI, DOC)
            for i in range(3):
                assert await inline(client, URI, i, _line_end(i)) is None
            stats = await _stats(client)
            logged = [m.message for m in client.log_messages]
            shown = [m.message for m in client.messages]
        finally:
            await stop_client(client)
    kind, words = expected
    assert stats["errors"] == {kind: 3}
    assert sum(words in m for m in logged) == 3, logged
    assert len([m for m in shown if words in m]) == 1, shown


async def test_rate_limit_honours_retry_after_without_calling_upstream(tmp_path: Path) -> None:
    with FakeUpstream(Reply(status=429, headers={"Retry-After": "30"})) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            # Automatic requests (typing), as an editor sends them.
            assert await inline(client, URI, 0, _line_end(0), invoked=False) is None
            assert _posts(fake) == 1
            results = [await inline(client, URI, i, _line_end(i), invoked=False)
                       for i in range(1, 10)]
            stats = await _stats(client)
        finally:
            await stop_client(client)
    assert results == [None] * 9
    assert _posts(fake) == 1  # no retry storm: nothing reached the upstream
    assert stats["skippedBackoff"] == 9
    assert stats["upstream"]["state"] == "backoff"
    # Retry-After (30 s) rules, not the first default backoff (at most 1 s).
    assert 20.0 < stats["upstream"]["pausedForSeconds"] <= 30.0


async def test_rate_limit_pause_ends_by_itself(tmp_path: Path) -> None:
    with FakeUpstream(Reply(status=429, headers={"Retry-After": "1"})) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, URI, DOC)
            assert await inline(client, URI, 0, _line_end(0), invoked=False) is None
            fake.reply = Reply(text="42")
            assert await inline(client, URI, 1, _line_end(1), invoked=False) is None
            assert _posts(fake) == 1
            await asyncio.sleep(1.2)
            res = await inline(client, URI, 2, _line_end(2), invoked=False)
            stats = await _stats(client)
        finally:
            await stop_client(client)
    assert _texts(res) == ["42"]
    assert _posts(fake) == 2, str({k: v for k, v in stats.items() if v and "Latency" not in k})
    assert stats["upstream"]["state"] == "healthy"


async def test_breaker_opens_serves_cache_and_closes_by_itself(tmp_path: Path) -> None:
    with FakeUpstream(Reply(text="cached_answer")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        try:
            open_doc(client, OTHER, "total = \n")
            warm = await inline(client, OTHER, 0, 8, invoked=False)
            assert _texts(warm) == ["cached_answer"]

            fake.reply = Reply(status=503)
            open_doc(client, URI, DOC)
            line = 0
            while (await _stats(client))["upstream"]["state"] != "open":
                assert line < 3, "the breaker must open after three failures in a row"
                assert await inline(client, URI, line, _line_end(line), invoked=False) is None
                line += 1
            calls = _posts(fake)
            for i in range(line, 10):
                assert await inline(client, URI, i, _line_end(i), invoked=False) is None
            assert _posts(fake) == calls  # paused: nothing reached the upstream
            # The other document still completes, from the cache.
            again = await inline(client, OTHER, 0, 8, invoked=False)
            assert _texts(again) == ["cached_answer"]

            fake.reply = Reply(text="back")
            res = None
            for attempt in range(40):  # the pause is at most one second here
                await asyncio.sleep(0.1)
                client.text_document_did_change(types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=URI,
                                                                        version=10 + attempt),
                    content_changes=[types.TextDocumentContentChangeWholeDocument(
                        text=DOC + f"n{attempt} = ")]))
                res = await inline(client, URI, 10, len(f"n{attempt} = "), invoked=False)
                if res is not None:
                    break
            stats = await _stats(client)
            shown = [m.message for m in client.messages]
        finally:
            await stop_client(client)
    assert _texts(res) == ["back"]
    assert stats["upstream"]["state"] == "healthy"
    assert len([m for m in shown if "HTTP 503" in m]) == 1


async def test_shutdown_answers_while_an_upstream_request_hangs(tmp_path: Path) -> None:
    with FakeUpstream(Reply(text="never", first_token_delay=60.0)) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base,
                                               QWEN_LSP_TIMEOUT_MS="120000"))
        try:
            open_doc(client, URI, DOC)
            pending = asyncio.ensure_future(inline(client, URI, 0, _line_end(0)))
            assert await asyncio.to_thread(fake.wait_for_requests, 1, 10.0)
            # Meanwhile the server answers other requests.
            assert (await _stats(client))["upstreamRequests"] == 1
            # A generous bound that only catches a hang, not a speed check.
            await asyncio.wait_for(client.shutdown_async(None), 20.0)
            outcome = await asyncio.gather(pending, return_exceptions=True)
            client.exit(None)
        finally:
            await client.stop()
    assert outcome[0] is None or isinstance(outcome[0], Exception)
    assert fake.wait_until_finished(10.0)
    assert next(r for r in fake.requests if r.method == "POST").aborted


async def test_upstream_killed_then_restored_resumes_with_one_message(tmp_path: Path) -> None:
    """Acceptance: kill the upstream mid-session, restore it on the same port."""
    fake = FakeUpstream(Reply(text="first", headers=CLOSE)).start()
    port = fake.port
    client = await start_client(openai_env(tmp_path, fake.openai_base))
    restored: FakeUpstream | None = None
    try:
        open_doc(client, URI, DOC)
        assert _texts(await inline(client, URI, 0, _line_end(0), invoked=False)) == ["first"]
        fake.stop()
        for i in range(1, 10):  # the user keeps typing while the upstream is down
            assert await inline(client, URI, i, _line_end(i), invoked=False) is None
        stats = await _stats(client)
        assert stats["errors"].get("connect", 0) >= 3
        assert stats["upstream"]["state"] == "open"

        restored = FakeUpstream(Reply(text="second", headers=CLOSE), port=port).start()
        res = None
        for attempt in range(60):  # no editor action: just keep typing
            await asyncio.sleep(0.1)
            client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2 + attempt),
                content_changes=[types.TextDocumentContentChangeWholeDocument(
                    text=DOC + f"n{attempt} = ")]))
            res = await inline(client, URI, 10, len(f"n{attempt} = "), invoked=False)
            if res is not None:
                break
        shown = [m.message for m in client.messages]
        final = await _stats(client)
    finally:
        await stop_client(client)
        fake.stop()
        if restored is not None:
            restored.stop()
    assert _texts(res) == ["second"]
    assert final["upstream"]["state"] == "healthy"
    assert len(shown) == 1 and "Cannot connect" in shown[0], shown


async def test_repeated_auth_failures_show_one_message(tmp_path: Path) -> None:
    with FakeUpstream(Reply(text="never"), api_key="sk-right-key-000000") as fake:
        env = server_env(tmp_path, QWEN_LSP_PROVIDER="dashscope",
                         QWEN_LSP_BASE_URL=fake.openai_base, QWEN_LSP_DEBOUNCE_MS="0",
                         DASHSCOPE_API_KEY="sk-wrong-key-111111")
        client = await start_client(env)
        try:
            open_doc(client, URI, DOC)
            for i in range(6):
                assert await inline(client, URI, i, _line_end(i)) is None
            shown = [m for m in client.messages]
            logged = [m.message for m in client.log_messages if "HTTP 401" in m.message]
        finally:
            await stop_client(client)
    assert _posts(fake) == 6  # invoked requests still try (the user asked)
    assert len(shown) == 1
    assert shown[0].type == types.MessageType.Error
    assert "API key" in shown[0].message and "region" in shown[0].message
    assert len(logged) == 6


async def test_status_notification_follows_upstream_health(tmp_path: Path) -> None:
    """``qwen/status`` tells the editor when completions fail and when they are back."""
    with FakeUpstream(Reply(status=503, headers=CLOSE)) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base))
        states: list[dict[str, Any]] = []

        @client.feature("qwen/status")
        def on_status(params: Any) -> None:
            states.append({"state": params.state, "message": params.message})

        try:
            open_doc(client, URI, DOC)
            assert await inline(client, URI, 0, _line_end(0)) is None
            fake.reply = Reply(text=" + 1", headers=CLOSE)
            ok = await inline(client, URI, 1, _line_end(1))
            await _stats(client)  # a round trip: earlier notifications have arrived
        finally:
            await stop_client(client)
    assert _texts(ok) == [" + 1"]
    assert [s["state"] for s in states] == ["error", "ok"]
    assert "HTTP 503" in states[0]["message"]
