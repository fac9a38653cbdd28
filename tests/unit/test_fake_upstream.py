"""The fake upstream itself: wire framing, auth, limits, concurrency, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.fake_upstream import CACHE_MIN_TOKENS, FakeUpstream, Reply, count_tokens, tokenize

ROOT = Path(__file__).resolve().parents[2]


def post(url: str, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(url, json=body, headers=headers or {}, timeout=5.0)


def test_tokenizer_round_trips() -> None:
    text = "def f(x):\n    return x  + 1  # ok"
    assert "".join(tokenize(text)) == text
    assert count_tokens("a b") == 3 and count_tokens("") == 0


def test_chat_stream_framing(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(chunks=["def", " f"])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    resp = post(fake_upstream.openai_base + "/chat/completions", body)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = resp.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {\"choices\":") for e in events[:-2])
    assert chunks[0]["choices"][0]["delta"] == {"content": "", "role": "assistant"}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:3]] == ["def", " f"]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"]["completion_tokens"] == count_tokens("def f")
    assert list(chunks[4]) == ["choices", "object", "usage", "created", "system_fingerprint",
                               "model", "id"]


def test_usage_chunk_only_when_requested(fake_upstream: FakeUpstream) -> None:
    fake_upstream.set_text("x")
    resp = post(fake_upstream.openai_base + "/completions",
                {"model": "m", "prompt": "p", "stream": True})
    assert '"usage":{' not in resp.text and resp.text.endswith("data: [DONE]\n\n")


def test_native_frames(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(chunks=["a", "b"])
    body = {"model": "m", "input": {"messages": [{"role": "user", "content": "q"}]},
            "parameters": {"result_format": "message", "incremental_output": True}}
    resp = post(fake_upstream.native_base + "/services/aigc/text-generation/generation", body,
                {"X-DashScope-SSE": "enable"})
    frames = resp.text.split("\n\n")[:-1]
    assert len(frames) == 3
    for n, frame in enumerate(frames, 1):
        assert frame.startswith(f'id:{n}\nevent:result\n:HTTP_STATUS/200\ndata:{{"output":')
    last = json.loads(frames[-1].split("data:", 1)[1])
    assert last["output"]["choices"][0] == {"message": {"content": "", "role": "assistant"},
                                            "finish_reason": "stop"}
    assert last["usage"]["output_tokens"] == count_tokens("ab")


def test_native_non_stream_and_cumulative(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(chunks=["a", "b"])
    url = fake_upstream.native_base + "/services/aigc/text-generation/generation"
    body = {"model": "m", "input": {"messages": [{"role": "user", "content": "q"}]},
            "parameters": {"result_format": "message"}}
    plain = post(url, body).json()
    assert plain["output"]["choices"][0]["message"]["content"] == "ab"
    streamed = post(url, body, {"X-DashScope-SSE": "enable"}).text
    assert '"content":"ab"' in streamed  # non-incremental frames repeat the text so far


def test_stop_and_max_tokens(fake_upstream: FakeUpstream) -> None:
    fake_upstream.set_text("one two\n\nthree four")
    url = fake_upstream.openai_base + "/completions"
    stopped = post(url, {"model": "m", "prompt": "p", "stop": ["\n\n"]}).json()
    assert stopped["choices"][0] == {"text": "one two", "finish_reason": "stop", "index": 0,
                                     "logprobs": None}
    capped = post(url, {"model": "m", "prompt": "p", "max_tokens": 2}).json()
    assert capped["choices"][0]["text"] == "one " and capped["choices"][0]["finish_reason"] == "length"


def test_api_key_enforced(fake_upstream: FakeUpstream) -> None:
    fake_upstream.api_key = "sk-right"
    url = fake_upstream.openai_base + "/completions"
    wrong = post(url, {"model": "m", "prompt": "p"}, {"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    ok = post(url, {"model": "m", "prompt": "p"}, {"Authorization": "Bearer sk-right"})
    assert ok.status_code == 200


def test_cache_threshold(fake_upstream: FakeUpstream) -> None:
    url = fake_upstream.openai_base + "/completions"
    short = "y " * 10
    long = "z " * CACHE_MIN_TOKENS

    def cached(prompt: str, model: str = "m") -> int:
        usage = post(url, {"model": model, "prompt": prompt}).json()["usage"]
        return usage["prompt_tokens_details"]["cached_tokens"]

    assert cached(short + "1") == 0 and cached(short + "2") == 0  # prefix below 256
    assert cached(long + "1") == 0
    assert cached(long + "2") == count_tokens(long)
    assert cached(long + "3", model="other") == 0  # the cache is per model


def test_many_concurrent_streams(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(text="a b c", token_delay=0.02)
    url = fake_upstream.openai_base + "/completions"

    def one(i: int) -> str:
        return post(url, {"model": "m", "prompt": str(i), "stream": True}).text

    with ThreadPoolExecutor(max_workers=40) as pool:
        bodies = list(pool.map(one, range(40)))
    assert all(b.endswith("data: [DONE]\n\n") for b in bodies)
    assert fake_upstream.wait_for_requests(40, 1.0) and len(fake_upstream.requests) == 40
    assert fake_upstream.wait_until_finished(5.0)
    assert not any(r.aborted for r in fake_upstream.requests)


def test_cli_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--text", "hello"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().split(": ", 1)[1].strip()
        body = post(base + "/completions", {"model": "m", "prompt": "p"}).json()
        assert body["choices"][0]["text"] == "hello"
    finally:
        proc.terminate()
        proc.wait(5)


def _blocks(*texts: str, marks: tuple[int, ...]) -> list[dict]:
    out = []
    for i, text in enumerate(texts):
        block: dict = {"type": "text", "text": text}
        if i in marks:
            block["cache_control"] = {"type": "ephemeral"}
        out.append(block)
    return out


def _details(fake: FakeUpstream, texts: tuple[str, ...], marks: tuple[int, ...]) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": _blocks(*texts, marks=marks)}]}
    resp = post(fake.openai_base + "/chat/completions", body)
    assert resp.status_code == 200, resp.text
    # The fake creates a request's caches once its handler is done, which can
    # be just after the client has read the answer.
    assert fake.wait_until_finished()
    return resp.json()["usage"]["prompt_tokens_details"]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_explicit_cache_create_hit_lookback_and_expiry(fake_upstream: FakeUpstream) -> None:
    clock = _Clock()
    fake_upstream.clock = clock
    big = "word " * 600  # 1,200 tokens
    a, b, c = big, "tail one ", "tail two "
    first = _details(fake_upstream, (a, b), marks=(0,))
    assert first == {"cached_tokens": 0, "cache_type": "ephemeral",
                     "cache_creation_input_tokens": count_tokens(a),
                     "cache_creation": {"ephemeral_5m_input_tokens": count_tokens(a)}}
    # A later marker looks back over the blocks before it and finds the cache,
    # then caches its own, longer prefix (only the new tokens are created).
    second = _details(fake_upstream, (a, b, c), marks=(2,))
    assert second["cached_tokens"] == count_tokens(a)
    assert second["cache_creation_input_tokens"] == count_tokens(b + c)
    # Each hit resets the 5-minute life; an unused cache expires.
    clock.now += 299
    assert _details(fake_upstream, (a, "x"), marks=(0,))["cached_tokens"] == count_tokens(a)
    clock.now += 299
    assert _details(fake_upstream, (a, "y"), marks=(0,))["cached_tokens"] == count_tokens(a)
    # The longer cache was not hit for 598 s and expired; the look-back finds
    # the shorter one the hits kept alive.
    assert _details(fake_upstream, (a, b, c), marks=(2,))["cached_tokens"] == count_tokens(a)
    clock.now += 301
    assert fake_upstream.explicit_caches() == 0
    assert _details(fake_upstream, (a, b), marks=(0,))["cached_tokens"] == 0


def test_explicit_cache_minimum_markers_and_modes(fake_upstream: FakeUpstream) -> None:
    small = "word " * 100
    for _ in range(2):  # below 1,024 tokens nothing is created
        details = _details(fake_upstream, (small, "x"), marks=(0,))
        assert details["cached_tokens"] == 0 and details["cache_creation_input_tokens"] == 0
    assert fake_upstream.explicit_caches() == 0
    body = {"model": "m", "messages": [{"role": "user", "content": _blocks(
        *(["word "] * 5), marks=(0, 1, 2, 3, 4))}]}
    resp = post(fake_upstream.openai_base + "/chat/completions", body)
    assert resp.status_code == 400 and "cache_control" in resp.json()["error"]["message"]
    # A request without markers uses the implicit cache, and marked requests
    # do not feed it.
    long = "z " * CACHE_MIN_TOKENS
    _details(fake_upstream, (long + "a",), marks=(0,))
    plain = {"model": "m", "messages": [{"role": "user", "content": long + "b"}]}
    usage = post(fake_upstream.openai_base + "/chat/completions", plain).json()["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    usage = post(fake_upstream.openai_base + "/chat/completions", plain).json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= count_tokens(long)
