"""An editor session with no API key: completions come from the local engine."""

from __future__ import annotations

import contextlib
import importlib.util

import psutil
import pytest

from tests.harness import (
    clear_cache,
    inline,
    open_doc,
    reconfigure,
    server_env,
    start_client,
    status,
    stop_client,
)

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python is not installed (pip install -e '.[local]')"),
]


async def test_inline_completion_from_the_local_engine_without_a_key(tmp_path) -> None:
    uri = "file:///work/proj/calc.py"
    client = await start_client(server_env(tmp_path))  # no key, no provider: local
    children: list[int] = []
    try:
        open_doc(client, uri, "def add(a, b):\n    \n\nprint(add(1, 2))\n")
        res = await inline(client, uri, 1, 4)
        status = await client.workspace_execute_command_async(
            __import__("lsprotocol").types.ExecuteCommandParams(command="qwen.status"))
        engine = status["localEngine"]
        children = [engine["pid"]] if engine and engine.get("pid") else []
    finally:
        await stop_client(client)
    assert status["settings"]["provider"] == "local"
    assert res is not None and res.items, "the local engine produced no completion"
    text = res.items[0].insert_text
    assert "a + b" in text.replace("a+b", "a + b")
    assert "print(add" not in text  # post-processing cut the copy of the suffix
    assert children, "the server did not report the engine's pid"
    for pid in children:
        try:
            proc = psutil.Process(pid)
            proc.wait(timeout=15)
        except psutil.NoSuchProcess:
            pass
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_engine_dies_when_the_language_server_is_killed(tmp_path) -> None:
    """SIGKILL gives the server no chance to clean up: the child must notice."""
    from lsprotocol import types

    uri = "file:///work/proj/calc.py"
    client = await start_client(server_env(tmp_path))
    server = client._server  # the qwen-lsp process pytest-lsp started
    assert server is not None
    open_doc(client, uri, "def add(a, b):\n    \n")
    await inline(client, uri, 1, 4)  # makes sure the engine is up
    status = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command="qwen.status"))
    pid = status["localEngine"]["pid"]
    assert psutil.pid_exists(pid)
    server.kill()
    await server.wait()
    try:
        psutil.Process(pid).wait(timeout=20)
    except psutil.NoSuchProcess:
        pass
    gone = not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with contextlib.suppress(Exception):  # the server is already dead
        await client.stop()
    assert gone, "the llama server outlived the killed language server"


async def test_engine_start_is_reported_as_work_done_progress(tmp_path) -> None:
    """A fresh model cache: assembly and start show as one progress sequence."""
    uri = "file:///work/proj/calc.py"
    env = server_env(tmp_path, XDG_CACHE_HOME=str(tmp_path / "cache"))
    client = await start_client(env, capabilities="visual_studio_code@v1.65.2")
    try:
        open_doc(client, uri, "def add(a, b):\n    \n")
        res = await inline(client, uri, 1, 4)
    finally:
        await stop_client(client)
    assert res is not None and res.items
    assert (tmp_path / "cache" / "qwen-lsp" / "models").is_dir()
    reports = [r for token_reports in client.progress_reports.values() for r in token_reports]
    kinds = [type(r).__name__ for r in reports]
    assert kinds[0] == "WorkDoneProgressBegin" and kinds[-1] == "WorkDoneProgressEnd", kinds
    percentages = [r.percentage for r in reports if getattr(r, "percentage", None) is not None]
    assert percentages == sorted(percentages) and percentages[-1] >= 80
    assert "ready" in reports[-1].message


async def test_changed_engine_settings_restart_the_engine(tmp_path) -> None:
    """contextSize changed in the editor: the running engine is replaced by one
    that uses it; unrelated settings leave the warm engine alone."""
    import asyncio

    from lsprotocol import types

    uri = "file:///work/proj/calc.py"
    client = await start_client(server_env(tmp_path), configuration={"qwen": {}})

    async def engine() -> dict | None:
        return (await status(client))["localEngine"]

    async def engine_other_than(pid: int) -> dict:
        while True:  # the new engine starts in the background
            now = await engine()
            if now and now.get("pid") and now["pid"] != pid and now.get("state") == "ready":
                return now
            await asyncio.sleep(0.2)

    try:
        open_doc(client, uri, "def add(a, b):\n    \n")
        assert (await inline(client, uri, 1, 4)).items
        first = await engine()
        assert first is not None and first["context_size"] == 4096
        await reconfigure(client, {"temperature": 0.2}, {"temperature": 0.2})
        during = await inline(client, uri, 1, 4)
        same = await engine()
        await reconfigure(client, {"temperature": 0.2, "contextSize": 2048}, {"contextSize": 2048})
        racing = await inline(client, uri, 1, 4)  # races the switch: must not fail
        second = await asyncio.wait_for(engine_other_than(first["pid"]), 120)
        after = await inline(client, uri, 1, 4)
        messages = [m.message for m in client.messages if m.type <= types.MessageType.Warning]
    finally:
        await stop_client(client)
    assert during is not None and during.items and same is not None
    assert same["pid"] == first["pid"], "an unrelated setting restarted the engine"
    assert racing is not None and racing.items
    assert second["context_size"] == 2048
    assert after is not None and after.items, "no completion from the restarted engine"
    assert messages == [], messages
    try:
        psutil.Process(first["pid"]).wait(timeout=15)
    except psutil.NoSuchProcess:
        pass
    assert not psutil.pid_exists(first["pid"]) or (
        psutil.Process(first["pid"]).status() == psutil.STATUS_ZOMBIE)


async def test_disabled_server_leaves_the_engine_off_until_enabled(tmp_path) -> None:
    import asyncio


    uri = "file:///work/proj/calc.py"
    client = await start_client(server_env(tmp_path), configuration={"qwen": {"enabled": False}})

    try:
        open_doc(client, uri, "def add(a, b):\n    \n")
        off = await inline(client, uri, 1, 4)  # a manual trigger, answered at once
        engine_while_off = (await status(client))["localEngine"]
        await reconfigure(client, {"enabled": True})

        async def ready() -> dict:
            while True:  # started in the background, without a completion request
                engine = (await status(client))["localEngine"]
                if engine and engine.get("state") == "ready":
                    return engine
                await asyncio.sleep(0.2)

        engine = await asyncio.wait_for(ready(), 120)
        on = await inline(client, uri, 1, 4)
    finally:
        await stop_client(client)
    assert off is None or not off.items
    assert engine_while_off is None, engine_while_off
    assert engine["pid"]
    assert on is not None and on.items


def _engine_log_since(path: str, offset: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode("utf-8", "replace")


async def test_revisit_restores_the_saved_state_of_a_place(tmp_path) -> None:
    """Place A, then place B far away, then back at A: the engine restores A's saved
    state (its own log says "cache hit" and how few prompt tokens it evaluated)."""
    import asyncio
    import os
    import re
    import sysconfig
    from pathlib import Path

    from lsprotocol import types

    text = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text(encoding="utf-8")
    lines = text.split("\n")
    uri = "file:///work/proj/argparse.py"
    client = await start_client(server_env(tmp_path))
    try:
        open_doc(client, uri, text)
        a, b = 1400, 2300  # two places ~900 lines apart, each at the end of a code line

        async def read_a_while() -> None:
            for _ in range(600):  # until the warm-up here has nothing left to do
                await asyncio.sleep(0.5)
                if not (await status(client))["localCache"]["warmUpRunning"]:
                    return

        # A user reads what came at A before going on. (Jumping on at once
        # leaves A unsaved where its answer was cut short: the engine saves a
        # state only for a request that ran to its end, and the one-token
        # request that saves it is skipped while a newer request waits.)
        await inline(client, uri, a, len(lines[a]))
        await read_a_while()
        await inline(client, uri, b, len(lines[b]))
        log_path = (await status(client))["localEngine"]["log_path"]
        await read_a_while()
        offset = os.path.getsize(log_path)
        # Back at A, Enter at the end of the line: a new context whose prompt
        # starts like A's. The completion cache is emptied first: where A's
        # answer was the next line, Enter types along it and the cache answers
        # without the engine (which answer A gets depends on the window this
        # machine's prompt speed allows). The engine's saved states stay.
        await clear_cache(client)
        indent = lines[a][: len(lines[a]) - len(lines[a].lstrip())]
        change = types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=a, character=len(lines[a])),
                              end=types.Position(line=a, character=len(lines[a]))),
            text="\n" + indent)
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[change]))
        await inline(client, uri, a + 1, len(indent))
        engine_log = _engine_log_since(log_path, offset)
        st = await status(client)
    finally:
        await stop_client(client)
    hits = re.findall(r"(\d+) prefix-match hit, remaining (\d+) prompt tokens", engine_log)
    assert "cache hit" in engine_log, engine_log[-2000:]
    assert hits, engine_log[-2000:]
    reused, remaining = map(int, hits[-1])
    # A's window was restored, and only the typed end of it was evaluated.
    assert reused > 2 * remaining, hits
    assert st["localCache"]["stateRestores"] >= 1


async def test_tab_right_after_a_suggestion_is_answered_by_the_prefetch(tmp_path) -> None:
    """Accept a suggestion at once (the editor sends the edit before any pause):
    the server has already asked the engine for the next one, "as if accepted",
    and the request at the new cursor needs no engine call of its own."""
    import asyncio

    from lsprotocol import types

    from tests.harness import stats

    uri = "file:///work/proj/shapes.py"
    text = ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n"
            "        \n")
    client = await start_client(server_env(tmp_path))
    try:
        open_doc(client, uri, text)
        res = await inline(client, uri, 3, 8)
        assert res is not None and res.items, "no suggestion to accept"
        shown = str(res.items[0].insert_text)
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(3, 8), end=types.Position(3, 8)),
                text=shown)]))
        for _ in range(600):  # until the prefetch has run (the warm-up goes idle)
            await asyncio.sleep(0.1)
            if (await stats(client))["prefetches"] and not (
                    await status(client))["localCache"]["warmUpRunning"]:
                break
        before = await stats(client)
        cursor = text.index("\n        \n") + 9  # line 3, character 8
        before_cursor = (text[:cursor] + shown).split("\n")
        # Automatic, as an editor asks after an accept (asked for by hand, an
        # answer of nothing is asked again: see test_engine_local).
        await inline(client, uri, len(before_cursor) - 1,
                     len(before_cursor[-1].encode("utf-16-le")) // 2, invoked=False)
        after = await stats(client)
    finally:
        await stop_client(client)
    assert before["prefetches"] >= 1, before
    assert after["upstreamRequests"] == before["upstreamRequests"], (before, after)
    assert after["cacheHits"] + after["typedThroughHits"] > (
        before["cacheHits"] + before["typedThroughHits"]), (before, after)


async def test_a_block_closed_early_leaves_its_state_saved(tmp_path) -> None:
    """A multi-line answer is closed by the server once its block is there, and the
    engine saves states only for requests that run to their end: the server then
    asks for the same prompt once more (one token), which the engine answers from
    its KV cache and saves (its log: the whole prompt matched, then "cache saved")."""
    import asyncio
    import os
    import re

    from tests.harness import stats

    uri = "file:///work/proj/shapes.py"
    text = ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n"
            "        self.y = y\n\n    def norm(self):\n        \n")
    client = await start_client(server_env(tmp_path))
    try:
        open_doc(client, uri, text)
        for _ in range(600):  # the engine is up and the warm-up of the open has run
            await asyncio.sleep(0.1)
            st = await status(client)
            if (st.get("localEngine") or {}).get("state") == "ready" and not (
                    st["localCache"]["warmUpRunning"]):
                break
        log_path = st["localEngine"]["log_path"]
        offset = os.path.getsize(log_path)
        res = await inline(client, uri, 6, 8)
        for _ in range(100):
            await asyncio.sleep(0.1)
            if (await stats(client))["keptStates"]:
                break
        for _ in range(600):
            await asyncio.sleep(0.1)
            if not (await status(client))["localCache"]["warmUpRunning"]:
                break
        after = await stats(client)
        engine_log = _engine_log_since(log_path, offset)
    finally:
        await stop_client(client)
    assert res is not None and res.items, "no suggestion"
    assert after["keptStates"] >= 1, after
    # The keep request: everything but the last token came from the KV cache.
    kept = re.search(r"(\d+) prefix-match hit, remaining 1 prompt tokens to eval"
                     r"(?:(?!prefix-match).)*?cache saved", engine_log, re.DOTALL)
    assert kept and int(kept.group(1)) > 20, engine_log[-3000:]
