"""Providers against the real loopback fake upstream (no patched functions)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import socket
import time
from typing import Any

import pytest

from qwen_lsp.providers import (
    DashScopeNativeProvider,
    OpenAICompatProvider,
    TextDelta,
    UpstreamError,
    UpstreamRequest,
    Usage,
)
from qwen_lsp.providers.http import StreamingProvider
from tests.fake_upstream import FakeUpstream, Recorded, Reply, count_tokens

KEY = "sk-test0123456789abcdef"
FIM = UpstreamRequest(
    prompt="<|fim_prefix|>def add(a, b):\n    <|fim_suffix|>\n<|fim_middle|>",
    max_tokens=32,
    temperature=0.1,
    stop=["<|endoftext|>", "\n\n"],
)
CHAT = UpstreamRequest(
    messages=[
        {"role": "system", "content": "Complete the code."},
        {"role": "assistant", "content": "def add(a, b):\n    ", "partial": True},
    ],
    max_tokens=16,
    temperature=0.0,
)


def openai(fake: FakeUpstream, **kw: Any) -> OpenAICompatProvider:
    args: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 5.0}
    args.update(kw)
    return OpenAICompatProvider(fake.openai_base, args.pop("api_key", KEY), "qwen3-coder-flash", **args)


def native(fake: FakeUpstream, **kw: Any) -> DashScopeNativeProvider:
    args: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 5.0}
    args.update(kw)
    return DashScopeNativeProvider(fake.native_base, KEY, "qwen3-coder-plus", **args)


async def collect(provider: StreamingProvider, request: UpstreamRequest) -> tuple[str, list[Any]]:
    events = [e async for e in provider.stream(request)]  # type: ignore[attr-defined]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return text, events


async def error_of(
    provider: StreamingProvider, request: UpstreamRequest
) -> tuple[UpstreamError, str]:
    """Run until the stream raises; return the error and the text received before it."""
    got: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for event in provider.stream(request):  # type: ignore[attr-defined]
            if isinstance(event, TextDelta):
                got.append(event.text)
    return info.value, "".join(got)


# -- request shapes -------------------------------------------------------------


async def test_fim_request_body_and_headers(fake_upstream: FakeUpstream) -> None:
    fake_upstream.set_text("return a + b")
    provider = openai(fake_upstream)
    text, events = await collect(provider, FIM)
    await provider.aclose()

    rec = fake_upstream.requests[0]
    assert rec.method == "POST"
    assert rec.path == "/compatible-mode/v1/completions"
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert rec.json == {
        "model": "qwen3-coder-flash",
        "prompt": FIM.prompt,
        "max_tokens": 32,
        "temperature": 0.1,
        "stop": ["<|endoftext|>", "\n\n"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert text == "return a + b"
    # Several deltas, then exactly one Usage as the last event.
    assert sum(isinstance(e, TextDelta) for e in events) > 1
    assert [type(e) for e in events].count(Usage) == 1 and isinstance(events[-1], Usage)
    assert events[-1] == Usage(count_tokens(FIM.prompt or ""), count_tokens(text), 0)


async def test_chat_partial_request_body(fake_upstream: FakeUpstream) -> None:
    fake_upstream.set_text("return a + b\n")
    extra = UpstreamRequest(messages=CHAT.messages, max_tokens=16, temperature=0.0,
                            extra={"seed": 7})
    provider = openai(fake_upstream, api_key=None)
    text, _ = await collect(provider, extra)
    await provider.aclose()

    rec = fake_upstream.requests[0]
    assert rec.path == "/compatible-mode/v1/chat/completions"
    assert "authorization" not in rec.headers  # no key, no header
    assert rec.json == {
        "model": "qwen3-coder-flash",
        "messages": CHAT.messages,
        "max_tokens": 16,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 7,
    }
    assert "stop" not in rec.json
    assert text == "return a + b\n"


async def test_native_request_and_stream(fake_upstream: FakeUpstream) -> None:
    fake_upstream.set_text("return a + b")
    request = UpstreamRequest(messages=CHAT.messages, max_tokens=20, temperature=0.2,
                              stop=["\n\n"])
    provider = native(fake_upstream)
    text, events = await collect(provider, request)
    await provider.aclose()

    rec = fake_upstream.requests[0]
    assert rec.path == "/api/v1/services/aigc/text-generation/generation"
    assert rec.headers["x-dashscope-sse"] == "enable"
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert rec.json == {
        "model": "qwen3-coder-plus",
        "input": {"messages": CHAT.messages},
        "parameters": {
            "result_format": "message",
            "incremental_output": True,
            "max_tokens": 20,
            "temperature": 0.2,
            "stop": ["\n\n"],
        },
    }
    assert text == "return a + b"
    prompt = "".join(m["content"] for m in CHAT.messages or [])
    assert events[-1] == Usage(count_tokens(prompt), count_tokens(text), 0)


async def test_native_refuses_fim(fake_upstream: FakeUpstream) -> None:
    provider = native(fake_upstream)
    assert not provider.supports_fim()
    err, _ = await error_of(provider, FIM)
    assert err.kind == "config"
    assert fake_upstream.requests == []


async def test_explicit_chunks_are_reassembled(fake_upstream: FakeUpstream) -> None:
    pieces = ["re", "turn", " a", " +", " b", "é"]
    fake_upstream.reply = Reply(chunks=pieces)
    for provider in (openai(fake_upstream), native(fake_upstream)):
        request = FIM if provider.supports_fim() else CHAT
        _, events = await collect(provider, request)
        await provider.aclose()
        assert [e.text for e in events if isinstance(e, TextDelta)] == pieces


async def test_cached_tokens_reported(fake_upstream: FakeUpstream) -> None:
    shared = "x = 1\n" * 100  # 300 approximate tokens
    first = UpstreamRequest(prompt=shared + "a", max_tokens=8)
    second = UpstreamRequest(prompt=shared + "b", max_tokens=8)
    fake_upstream.set_text("pass")
    provider = openai(fake_upstream)
    _, events1 = await collect(provider, first)
    _, events2 = await collect(provider, second)
    await provider.aclose()
    assert events1[-1].cached_tokens == 0
    assert events2[-1].cached_tokens == count_tokens(shared)


async def test_usage_override_and_native_cumulative(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(text="abc def", usage={"prompt_tokens": 900, "cached_tokens": 512})
    provider = native(fake_upstream)
    _, events = await collect(provider, CHAT)
    await provider.aclose()
    assert events[-1] == Usage(900, count_tokens("abc def"), 512)


async def test_no_usage_event_when_server_sends_none(fake_upstream: FakeUpstream) -> None:
    body = (
        b'data: {"choices":[{"text":"hi","index":0,"logprobs":null,"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n"
    )
    fake_upstream.reply = Reply(raw=body)
    provider = openai(fake_upstream)
    _, events = await collect(provider, FIM)
    await provider.aclose()
    assert events == [TextDelta("hi")]


async def test_plain_json_body_accepted(fake_upstream: FakeUpstream) -> None:
    body = {
        "choices": [{"message": {"content": "x + 1", "role": "assistant"},
                     "finish_reason": "stop", "index": 0}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    fake_upstream.reply = Reply(raw=json.dumps(body).encode(), content_type="application/json")
    provider = openai(fake_upstream)
    _, events = await collect(provider, CHAT)
    await provider.aclose()
    assert events == [TextDelta("x + 1"), Usage(5, 3, 0)]


# -- HTTP status errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "bad_request"), (401, "auth"), (403, "auth"), (404, "not_found"),
     (500, "server"), (502, "server"), (503, "server")],
)
async def test_status_kinds(fake_upstream: FakeUpstream, status: int, kind: str) -> None:
    fake_upstream.reply = Reply(status=status)
    provider = openai(fake_upstream)
    err, _ = await error_of(provider, FIM)
    await provider.aclose()
    assert (err.kind, err.status) == (kind, status)


async def test_bad_request_message_surfaced(fake_upstream: FakeUpstream) -> None:
    detail = "Range of max_tokens should be [1, 8192]"
    error = {"error": {"message": detail, "type": "invalid_request_error", "code": "invalid_value"}}
    fake_upstream.reply = Reply(status=400, error=error)
    provider = openai(fake_upstream)
    err, _ = await error_of(provider, FIM)
    await provider.aclose()
    assert detail in str(err)
    assert err.code == "invalid_value"


async def test_native_error_body_and_auth_hint(fake_upstream: FakeUpstream) -> None:
    fake_upstream.api_key = "sk-the-right-key-000"
    provider = native(fake_upstream)
    err, _ = await error_of(provider, CHAT)
    await provider.aclose()
    assert err.kind == "auth" and err.code == "InvalidApiKey"
    assert "Invalid API-key provided" in str(err)
    assert "region" in str(err)


async def test_not_found_names_model(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(status=404)
    provider = openai(fake_upstream)
    err, _ = await error_of(provider, CHAT)
    await provider.aclose()
    assert "qwen3-coder-flash" in str(err)


async def test_rate_limited_retry_after_seconds(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(status=429, headers={"Retry-After": "7"})
    provider = openai(fake_upstream)
    err, _ = await error_of(provider, FIM)
    await provider.aclose()
    assert err.kind == "rate_limited" and err.retry_after == 7.0


async def test_rate_limited_retry_after_http_date(fake_upstream: FakeUpstream) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    fake_upstream.reply = Reply(status=429, headers={"Retry-After": when})
    provider = native(fake_upstream)
    err, _ = await error_of(provider, CHAT)
    await provider.aclose()
    assert err.retry_after is not None and 60 < err.retry_after <= 121


async def test_key_never_in_error_even_if_echoed(fake_upstream: FakeUpstream) -> None:
    echoed = {"error": {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}}
    fake_upstream.reply = Reply(status=401, error=echoed)
    provider = openai(fake_upstream)
    err, _ = await error_of(provider, FIM)
    await provider.aclose()
    assert err.kind == "auth"
    for text in (str(err), repr(err), err.message, repr(provider)):
        assert KEY not in text
    assert "Incorrect API key provided" in str(err)


# -- transport errors -------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_connection_refused() -> None:
    provider = OpenAICompatProvider(f"http://127.0.0.1:{closed_port()}/v1", KEY, "m",
                                    connect_timeout=2.0, read_timeout=2.0)
    err, _ = await error_of(provider, FIM)
    await provider.aclose()
    assert err.kind == "connect"


async def test_dns_failure() -> None:
    provider = OpenAICompatProvider("https://qwen-lsp-test.invalid/v1", KEY, "m",
                                    connect_timeout=2.0, read_timeout=2.0)
    err, _ = await error_of(provider, FIM)
    await provider.aclose()
    assert err.kind in ("connect", "timeout")
    assert "qwen-lsp-test.invalid" in str(err) or err.kind == "timeout"


async def test_read_timeout(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(text="late", first_token_delay=3.0)
    provider = openai(fake_upstream, read_timeout=0.3)
    err, text = await error_of(provider, FIM)
    await provider.aclose()
    assert err.kind == "timeout" and text == ""
    # The fake noticed that the client went away during its delay.
    assert fake_upstream.wait_until_finished(5.0)
    assert fake_upstream.requests[0].aborted


async def test_plain_http_to_remote_host_refused() -> None:
    provider = OpenAICompatProvider("http://example.com/v1", KEY, "m",
                                    connect_timeout=1.0, read_timeout=1.0)
    err, _ = await error_of(provider, FIM)
    assert err.kind == "config" and "https" in str(err)
    assert KEY not in str(err)
    # Without a key there is nothing secret to leak; loopback is always allowed.
    from qwen_lsp.providers.http import check_transport
    check_transport("http://example.com/v1", None)
    for host in ("127.0.0.1", "127.9.9.9", "[::1]", "localhost"):
        check_transport(f"http://{host}:8080/v1", KEY)


# -- protocol errors --------------------------------------------------------------


async def test_cut_stream_keeps_partial_text(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(chunks=["one", " two", " three", " four"], cut_after=2)
    for provider in (openai(fake_upstream), native(fake_upstream)):
        request = FIM if provider.supports_fim() else CHAT
        err, text = await error_of(provider, request)
        await provider.aclose()
        assert err.kind == "protocol"
        assert text == "one two"


async def test_clean_end_without_done_is_cut(fake_upstream: FakeUpstream) -> None:
    body = b'data: {"choices":[{"delta":{"content":"par"},"index":0,"finish_reason":null}]}\n\n'
    fake_upstream.reply = Reply(raw=body)
    provider = openai(fake_upstream)
    err, text = await error_of(provider, CHAT)
    await provider.aclose()
    assert err.kind == "protocol" and text == "par"


async def test_malformed_json_chunk(fake_upstream: FakeUpstream) -> None:
    body = (
        b'data: {"choices":[{"text":"ok","index":0,"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"text": broken\n\n'
        b"data: [DONE]\n\n"
    )
    fake_upstream.reply = Reply(raw=body)
    provider = openai(fake_upstream)
    err, text = await error_of(provider, FIM)
    await provider.aclose()
    assert err.kind == "protocol" and "Malformed" in str(err)
    assert text == "ok"


@pytest.mark.parametrize(
    ("raw", "ctype"),
    [(b"<html><body>Gateway</body></html>", "text/html"),
     (b'{"unexpected": true}', "application/json"),
     (b"not json at all", "application/json")],
)
async def test_wrong_or_useless_content(fake_upstream: FakeUpstream, raw: bytes, ctype: str) -> None:
    fake_upstream.reply = Reply(raw=raw, content_type=ctype)
    provider = openai(fake_upstream)
    err, _ = await error_of(provider, FIM)
    await provider.aclose()
    assert err.kind == "protocol"


async def test_native_error_frame(fake_upstream: FakeUpstream) -> None:
    body = (
        b'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"choices":[{"message":'
        b'{"content":"def","role":"assistant"},"finish_reason":"null"}]},"usage":'
        b'{"total_tokens":3,"output_tokens":1,"input_tokens":2},"request_id":"r"}\n\n'
        b'id:2\nevent:error\n:HTTP_STATUS/429\ndata:{"code":"Throttling.RateQuota",'
        b'"message":"Requests rate limit exceeded.","request_id":"r"}\n\n'
    )
    fake_upstream.reply = Reply(raw=body)
    provider = native(fake_upstream)
    err, text = await error_of(provider, CHAT)
    await provider.aclose()
    assert text == "def"
    assert err.kind == "rate_limited" and "Requests rate limit exceeded." in str(err)


async def test_native_error_object_without_output(fake_upstream: FakeUpstream) -> None:
    body = b'{"code":"InvalidParameter","message":"Input is too long","request_id":"r"}'
    fake_upstream.reply = Reply(raw=body, content_type="application/json")
    provider = native(fake_upstream)
    err, _ = await error_of(provider, CHAT)
    await provider.aclose()
    assert err.kind == "bad_request" and "Input is too long" in str(err)


async def test_oversized_response(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(text="word " * 5000)
    provider = openai(fake_upstream, max_response_bytes=20_000)
    err, text = await error_of(provider, UpstreamRequest(prompt="p", max_tokens=100_000))
    await provider.aclose()
    assert err.kind == "protocol" and "20000" in str(err)
    assert 0 < len(text) < 20_000


async def test_endless_stream_capped(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(text="tick ", endless=True)
    provider = native(fake_upstream, max_response_bytes=50_000)
    err, text = await error_of(provider, CHAT)
    await provider.aclose()
    assert err.kind == "protocol"
    assert text.startswith("tick tick")
    assert fake_upstream.wait_until_finished(10.0)
    assert fake_upstream.requests[0].aborted


# -- cancellation -----------------------------------------------------------------


async def test_aclose_mid_stream_aborts_upstream(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(text="a b c d e f g h i j k l m n o p", token_delay=0.05)
    provider = openai(fake_upstream)
    stream = provider.stream(CHAT)
    first = await stream.__anext__()
    assert isinstance(first, TextDelta)
    await stream.aclose()  # type: ignore[attr-defined]
    assert fake_upstream.wait_until_finished(5.0)
    assert fake_upstream.requests[0].aborted
    await provider.aclose()


async def test_task_cancel_aborts_upstream(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(text="x", first_token_delay=5.0)
    provider = native(fake_upstream)

    async def consume() -> None:
        async for _ in provider.stream(CHAT):
            pass

    task = asyncio.create_task(consume())
    assert await asyncio.to_thread(fake_upstream.wait_for_requests, 1, 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(fake_upstream.wait_until_finished, 5.0)
    assert fake_upstream.requests[0].aborted
    await provider.aclose()


async def test_completed_stream_not_aborted(fake_upstream: FakeUpstream) -> None:
    fake_upstream.set_text("done")
    provider = openai(fake_upstream)
    await collect(provider, FIM)
    await provider.aclose()
    assert fake_upstream.wait_until_finished(5.0)
    assert not fake_upstream.requests[0].aborted


async def test_client_reused_and_recreated_after_aclose(fake_upstream: FakeUpstream) -> None:
    fake_upstream.set_text("ok")
    provider = openai(fake_upstream)
    assert (await collect(provider, FIM))[0] == "ok"
    assert (await collect(provider, FIM))[0] == "ok"
    await provider.aclose()
    assert (await collect(provider, FIM))[0] == "ok"
    await provider.aclose()
    paths = [r.path for r in fake_upstream.requests]
    assert paths == ["/compatible-mode/v1/completions"] * 3


@pytest.mark.parametrize("make,request_", [(openai, FIM), (openai, CHAT), (native, CHAT)],
                         ids=["fim", "chat", "native"])
async def test_finished_streams_keep_the_connection(
    fake_upstream: FakeUpstream, make: Any, request_: UpstreamRequest
) -> None:
    """A stream read to its final event leaves its connection open for the next request."""
    fake_upstream.set_text("return a + b")
    provider = make(fake_upstream)
    for _ in range(3):
        assert (await collect(provider, request_))[0] == "return a + b"
    await provider.aclose()
    assert fake_upstream.wait_until_finished(5.0)
    assert not any(r.aborted for r in fake_upstream.requests)
    assert len({r.client_port for r in fake_upstream.requests}) == 1


async def test_server_lingering_after_final_event_is_cut_off(fake_upstream: FakeUpstream) -> None:
    """A body that stays open after [DONE] neither delays the text nor hangs the stream."""
    fake_upstream.reply = Reply(text="return a + b", linger=30.0)
    provider = openai(fake_upstream)
    text, events = await asyncio.wait_for(collect(provider, FIM), 10.0)
    await provider.aclose()
    assert text == "return a + b" and isinstance(events[-1], Usage)
    assert await asyncio.to_thread(fake_upstream.wait_until_finished, 5.0)
    assert fake_upstream.requests[0].aborted  # we closed it; the next request opens a new one


async def test_reply_callable_sees_request(fake_upstream: FakeUpstream) -> None:
    def reply(rec: Recorded) -> Reply:
        return Reply(text=str(rec.json["max_tokens"]))

    fake_upstream.reply = reply
    provider = openai(fake_upstream)
    text, _ = await collect(provider, FIM)
    await provider.aclose()
    assert text == "32"


# -- factory ----------------------------------------------------------------------


async def test_make_provider_choices(fake_upstream: FakeUpstream) -> None:
    from qwen_lsp.providers import make_provider
    from qwen_lsp.settings import Settings

    dashscope = Settings(provider="dashscope", api="dashscope", api_key=KEY, region="cn")
    chosen = make_provider(dashscope)
    assert isinstance(chosen, DashScopeNativeProvider)
    assert chosen.base_url == "https://dashscope.aliyuncs.com/api/v1"
    compat = make_provider(Settings(provider="dashscope", api="openai", api_key=KEY))
    assert isinstance(compat, OpenAICompatProvider)
    assert compat.base_url == "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
    local = make_provider(Settings(provider="local", api="dashscope"),
                          base_url_override=fake_upstream.openai_base)
    assert isinstance(local, OpenAICompatProvider) and local.name == "local"
    with pytest.raises(UpstreamError) as info:
        make_provider(Settings(provider="local"))
    assert info.value.kind == "config"

    # The override key is the one sent, and timeouts come from the settings.
    fake_upstream.set_text("ok")
    settings = Settings(provider="openai", api_key="sk-from-settings-000",
                        base_url=fake_upstream.openai_base, timeout_ms=4000)
    provider = make_provider(settings, api_key_override="sk-override-key-111")
    assert (await collect(provider, FIM))[0] == "ok"  # type: ignore[arg-type]
    await provider.aclose()
    assert fake_upstream.requests[0].headers["authorization"] == "Bearer sk-override-key-111"
    for p in (chosen, compat, local):
        await p.aclose()


async def test_aclose_when_idle_lets_open_streams_finish(fake_upstream: FakeUpstream) -> None:
    """A settings change closes the old client only after its streams end."""
    fake_upstream.reply = Reply(text="return a + b", token_delay=0.05)
    provider = openai(fake_upstream)
    task = asyncio.create_task(collect(provider, FIM))
    assert await asyncio.to_thread(fake_upstream.wait_for_requests, 1, 5.0)
    await provider.aclose_when_idle(30.0)
    assert task.done(), "aclose_when_idle returned while a stream was still open"
    text, events = task.result()
    assert text == "return a + b" and isinstance(events[-1], Usage)
    assert await asyncio.to_thread(fake_upstream.wait_until_finished, 5.0)
    assert not fake_upstream.requests[0].aborted


async def test_aclose_when_idle_cuts_streams_after_the_grace(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(text="x", endless=True, token_delay=0.05)
    provider = openai(fake_upstream)
    task = asyncio.create_task(collect(provider, FIM))
    assert await asyncio.to_thread(fake_upstream.wait_for_requests, 1, 5.0)
    await provider.aclose_when_idle(0.3)
    with pytest.raises(UpstreamError):
        await asyncio.wait_for(task, 10.0)
    assert await asyncio.to_thread(fake_upstream.wait_until_finished, 5.0)
    assert fake_upstream.requests[0].aborted


def _marked_chat(code: str) -> UpstreamRequest:
    """A block-layout chat whose first user block is big and marked."""
    return UpstreamRequest(
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Complete the code."}]},
            {"role": "user", "content": [
                {"type": "text", "text": code, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Complete the line."},
            ]},
            {"role": "assistant", "content": "x = ", "partial": True},
        ],
        max_tokens=16,
        temperature=0.0,
    )


@pytest.mark.parametrize("api", ["openai", "native"])
async def test_explicit_cache_usage_is_read_by_class(fake_upstream: FakeUpstream,
                                                      api: str) -> None:
    fake_upstream.reply = Reply(text="1")
    provider = openai(fake_upstream) if api == "openai" else native(fake_upstream)
    code = "value = compute(1, 2)\n" * 200
    first = _marked_chat(code)
    _, events = await collect(provider, first)
    created = events[-1]
    marked = count_tokens("Complete the code." + code)
    assert created.cache_creation_tokens == marked and created.explicit_cached_tokens == 0
    assert created.cached_tokens == 0  # no implicit discount with markers
    assert created.standard_tokens == created.prompt_tokens - marked
    _, events = await collect(provider, first)
    hit = events[-1]
    assert hit.explicit_cached_tokens == marked and hit.cache_creation_tokens == 0
    details = fake_upstream.requests[-1].bill
    assert details["explicit"] == marked and details["implicit"] == 0
    await provider.aclose()


def test_usage_details_of_both_cache_modes() -> None:
    from qwen_lsp.providers.base import usage_from_counts

    implicit = usage_from_counts(3000, 20, {"cached_tokens": 2048})
    assert (implicit.cached_tokens, implicit.explicit_cached_tokens) == (2048, 0)
    created = usage_from_counts(3564, 23, {
        "cache_creation": {"ephemeral_5m_input_tokens": 3550},
        "cache_creation_input_tokens": 3550, "cache_type": "ephemeral", "cached_tokens": 0})
    assert created.cache_creation_tokens == 3550 and created.standard_tokens == 14
    only_breakdown = usage_from_counts(100, 1, {"cache_creation": {
        "ephemeral_5m_input_tokens": 60}, "cache_type": "ephemeral"})
    assert only_breakdown.cache_creation_tokens == 60
    hit = usage_from_counts(1507, 267, {"cached_tokens": 1486, "cache_type": "ephemeral",
                                       "cache_creation_input_tokens": 0})
    assert hit.explicit_cached_tokens == 1486 and hit.cached_tokens == 0
    odd = usage_from_counts("x", None, {"cached_tokens": -5, "cache_type": 3})
    assert odd == Usage(0, 0, 0)


@pytest.mark.parametrize(("status", "native_body"), [(503, True), (400, False), (429, True)])
async def test_throttling_codes_are_rate_limits_whatever_the_status(
        fake_upstream: FakeUpstream, status: int, native_body: bool) -> None:
    error = ({"code": "Throttling.RateQuota", "message": "Requests rate limit exceeded"}
             if native_body else
             {"error": {"message": "Too many requests", "type": "limit_requests",
                        "code": "limit_requests"}})
    fake_upstream.reply = Reply(status=status, error=error, headers={"Retry-After": "7"})
    err, _ = await error_of(openai(fake_upstream), CHAT)
    assert err.kind == "rate_limited" and err.retry_after == 7.0 and err.status == status
    assert f"Rate limited (HTTP {status})" in err.message
