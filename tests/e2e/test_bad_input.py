"""Bad LSP input, end to end: odd positions, odd text, odd URIs, odd messages.

Every case gets an empty result or a JSON-RPC error, the server keeps running,
and its copy of each document stays equal to the client's. The copy is read
back through the only channel a server has to the outside, the prompt the
loopback upstream records (a manual completion at the end of a small document
puts the whole text into the FIM prompt).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from tests.fake_upstream import FakeUpstream, Reply, fim_parts
from tests.harness import (
    ROOT,
    clear_cache,
    complete,
    inline,
    open_doc,
    openai_env,
    server_env,
    start_client,
    stop_client,
)

URI = "file:///work/proj/bad.py"
_BREAK = re.compile(r"\r\n|\r|\n")


# -- raw JSON-RPC on the client's pipe ------------------------------------------------------

def send_raw(client: LanguageClient, message: dict[str, Any] | bytes) -> None:
    """Write one framed message exactly as given (no lsprotocol validation)."""
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    writer = client.protocol.writer
    assert writer is not None
    writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


async def raw_request(client: LanguageClient, method: str, params: Any,
                      timeout: float = 20.0) -> Any:
    """Send a request with arbitrary params; return its result or raise JsonRpcException."""
    msg_id = f"raw-{uuid.uuid4()}"
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    client.protocol._request_futures[msg_id] = future
    send_raw(client, {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
    return await asyncio.wait_for(asyncio.wrap_future(future), timeout)


# -- the client's model of a document ---------------------------------------------------------

def end_position(text: str, encoding: str = "utf-16") -> tuple[int, int]:
    lines = _BREAK.split(text)
    codec, width = {"utf-8": ("utf-8", 1), "utf-16": ("utf-16-le", 2),
                    "utf-32": ("utf-32-le", 4)}[encoding]
    return len(lines) - 1, len(lines[-1].encode(codec, "surrogatepass")) // width


def prompt_parts(prompt: str) -> tuple[str, str]:
    head = prompt.partition("<|fim_prefix|>")[0]
    assert head == "" or "<|file_sep|>" in head, prompt[:200]
    return fim_parts(prompt)


async def server_copy(client: LanguageClient, fake: FakeUpstream, uri: str,
                      client_text: str) -> str:
    """The server's text of ``uri``, as the upstream receives it.

    The cursor goes to the end of the first line, which must not be blank (on
    a blank line the prompt is laid out differently on purpose).
    """
    first = _BREAK.split(client_text, maxsplit=1)[0]
    assert first.strip(), "server_copy needs a non-blank first line"
    await clear_cache(client)
    before = len(fake.requests)
    await inline(client, uri, 0, end_position(first)[1])
    assert len(fake.requests) == before + 1, "the server did not call the upstream"
    prefix, suffix = prompt_parts(fake.requests[-1].json["prompt"])
    return prefix + suffix


def edit(client: LanguageClient, uri: str, version: int,
         start: tuple[int, int], end: tuple[int, int], text: str) -> None:
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(*start), end=types.Position(*end)),
            text=text)]))


def replace_all(client: LanguageClient, uri: str, version: int, text: str) -> None:
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))


def _env(tmp: Path, fake: FakeUpstream, **extra: str) -> dict[str, str]:
    return openai_env(tmp, fake.openai_base, QWEN_LSP_CROSS_FILE="false", **extra)


# Positions in these tests are UTF-16 code units, the LSP default.
UTF16_ONLY = types.ClientCapabilities(
    general=types.GeneralClientCapabilities(position_encodings=["utf-16"]))


async def _start(tmp: Path, fake: FakeUpstream, **extra: str) -> LanguageClient:
    return await start_client(_env(tmp, fake, **extra), capabilities=UTF16_ONLY)


# -- tests ------------------------------------------------------------------------------------

async def test_unknown_closed_and_out_of_range_positions(tmp_path: Path) -> None:
    text = "alpha = 1\nbeta = \n"
    with FakeUpstream(Reply(text="2")) as fake:
        client = await _start(tmp_path, fake)
        try:
            assert await inline(client, "file:///never/opened.py", 0, 0) is None
            open_doc(client, URI, text)
            # Past EOF (line count is 3: the text ends with a newline).
            assert await inline(client, URI, 3, 0) is None
            assert await inline(client, URI, 1000, 5) is None
            assert not (await complete(client, URI, 3, 0)).items
            assert fake.requests == []
            # Past the line end: clamped to the line end, as LSP asks.
            res = await inline(client, URI, 1, 400)
            assert res is not None and res.items[0].insert_text == "2"
            pos = types.Position(1, 7)
            assert res.items[0].range == types.Range(start=pos, end=pos)
            prefix, suffix = prompt_parts(fake.requests[-1].json["prompt"])
            assert (prefix, suffix) == ("alpha = 1\nbeta = ", "\n")
            # Negative positions are not valid LSP: a JSON-RPC error, no crash.
            for line, character in ((-1, 0), (0, -3)):
                try:
                    await raw_request(client, "textDocument/inlineCompletion", {
                        "textDocument": {"uri": URI},
                        "position": {"line": line, "character": character},
                        "context": {"triggerKind": 1}})
                except JsonRpcException as exc:
                    assert exc.code == -32602  # InvalidParams
                else:
                    raise AssertionError("a negative position was accepted")
            # Closed documents are forgotten.
            client.text_document_did_close(types.DidCloseTextDocumentParams(
                text_document=types.TextDocumentIdentifier(uri=URI)))
            calls = len(fake.requests)
            assert await inline(client, URI, 1, 7) is None
            assert len(fake.requests) == calls
            # Reopened with other text: the server has the new text only.
            open_doc(client, URI, "gamma = \n", version=5)
            assert await server_copy(client, fake, URI, "gamma = \n") == "gamma = \n"
        finally:
            await stop_client(client)


async def test_odd_text_survives_exactly(tmp_path: Path) -> None:
    """Control characters, astral and combining characters, every line break.

    (A NUL would make the document binary, which is never sent: test_binary.py.)
    """
    text = "ab = '\x01\x7f'\r\nc = 'e\u0301😀'\rd = '\u2028\x0b\x0c\x85'\n\tz = "
    with FakeUpstream(Reply(text="0")) as fake:
        client = await _start(tmp_path, fake)
        try:
            open_doc(client, URI, text)
            assert await server_copy(client, fake, URI, text) == text
            # An edit after the astral character on line 1, in UTF-16 units.
            edit(client, URI, 2, (1, 9), (1, 9), "!")
            text = text.replace("😀'", "😀!'")
            assert await server_copy(client, fake, URI, text) == text
        finally:
            await stop_client(client)


async def test_lone_surrogates_are_kept_and_never_break_the_request(tmp_path: Path) -> None:
    r"""JSON may carry "\ud800"; the server keeps it and the upstream gets valid UTF-8."""
    text = "s = 'a\ud800b\udfff'\nt = "
    with FakeUpstream(Reply(text="1")) as fake:
        client = await _start(tmp_path, fake)
        try:
            open_doc(client, URI, text)
            res = await inline(client, URI, *end_position(text))
            assert res is not None and res.items[0].insert_text == "1"
            body = fake.requests[-1].body
            body.decode("utf-8")  # strictly valid UTF-8 on the wire
            prefix, suffix = prompt_parts(fake.requests[-1].json["prompt"])
            assert prefix + suffix == "s = 'a\ufffdb\ufffd'\nt = "
            # Positions after the surrogates still line up (one UTF-16 unit each).
            edit(client, URI, 2, (0, 9), (0, 9), "c")
            text = text.replace("\udfff", "\udfffc")
            await clear_cache(client)
            await inline(client, URI, *end_position(text))
            prefix, suffix = prompt_parts(fake.requests[-1].json["prompt"])
            assert prefix + suffix == "s = 'a\ufffdb\ufffdc'\nt = "
        finally:
            await stop_client(client)


async def test_non_file_uris(tmp_path: Path) -> None:
    uris = ["untitled:Untitled-1", "vscode-notebook-cell:/work/proj/nb.ipynb#W0sZmlsZQ%3D%3D",
            "vscode-vfs://github/owner/repo/x.py"]
    with FakeUpstream(Reply(text="42")) as fake:
        client = await _start(tmp_path, fake)
        try:
            for n, uri in enumerate(uris):
                text = f"value_{n} = "
                open_doc(client, uri, text)
                assert await server_copy(client, fake, uri, text) == text
            # An empty untitled buffer: automatic requests stay quiet.
            open_doc(client, "untitled:Untitled-2", "")
            calls = len(fake.requests)
            assert await inline(client, "untitled:Untitled-2", 0, 0, invoked=False) is None
            assert len(fake.requests) == calls
        finally:
            await stop_client(client)


async def test_out_of_range_edits(tmp_path: Path) -> None:
    text = "one = 1\ntwo = 2\n"
    with FakeUpstream(Reply(text="3")) as fake:
        client = await _start(tmp_path, fake)
        try:
            open_doc(client, URI, text)
            # A character past the line end means the line end (LSP).
            edit(client, URI, 2, (0, 99), (0, 99), "0")
            text = "one = 10\ntwo = 2\n"
            assert await server_copy(client, fake, URI, text) == text
            # A line past the end means the end of the document.
            edit(client, URI, 3, (40, 0), (50, 3), "x = ")
            text += "x = "
            assert await server_copy(client, fake, URI, text) == text
            # An inverted range cannot be applied: the server stops completing
            # there (rather than guessing) until the client sends the full text.
            edit(client, URI, 4, (1, 5), (0, 2), "?")
            calls = len(fake.requests)
            assert await inline(client, URI, 2, 4) is None
            assert len(fake.requests) == calls
            warned = [m.message for m in client.log_messages if "rejected edit" in m.message]
            assert len(warned) == 1
            replace_all(client, URI, 5, text)
            assert await server_copy(client, fake, URI, text) == text
            # Edits for a document that is not open are ignored.
            edit(client, "file:///work/proj/ghost.py", 2, (0, 0), (0, 0), "boo")
            assert await server_copy(client, fake, URI, text) == text
        finally:
            await stop_client(client)


async def test_unknown_methods_and_malformed_params(tmp_path: Path) -> None:
    text = "k = \n"
    with FakeUpstream(Reply(text="7")) as fake:
        client = await _start(tmp_path, fake)
        try:
            open_doc(client, URI, text)
            try:
                await raw_request(client, "qwen/noSuchMethod", {"x": 1})
            except JsonRpcException as exc:
                assert exc.code == -32601  # MethodNotFound
            else:
                raise AssertionError("unknown method answered")
            # Unknown notifications are ignored silently.
            send_raw(client, {"jsonrpc": "2.0", "method": "qwen/noSuchNotification"})
            send_raw(client, {"jsonrpc": "2.0", "method": "$/someExtension", "params": [1]})
            bad_params: list[tuple[str, Any]] = [
                ("textDocument/completion", {"textDocument": 5}),
                ("textDocument/completion", None),
                ("textDocument/inlineCompletion", {"textDocument": {"uri": URI}}),
                ("textDocument/inlineCompletion", [1, 2, 3]),
                ("textDocument/completion", {"textDocument": {"uri": URI},
                                             "position": {"line": "x", "character": 0}}),
                ("workspace/executeCommand", {"command": 12}),
            ]
            for method, params in bad_params:
                try:
                    await raw_request(client, method, params)
                except JsonRpcException as exc:
                    assert exc.code in (-32602, -32600), (method, params, exc.code)
                else:
                    raise AssertionError(f"{method} {params!r} was accepted")
            # Malformed notifications change nothing.
            send_raw(client, {"jsonrpc": "2.0", "method": "textDocument/didChange",
                              "params": {"textDocument": {"uri": URI}}})
            send_raw(client, {"jsonrpc": "2.0", "method": "textDocument/didOpen",
                              "params": {"textDocument": {"uri": URI, "text": 3}}})
            # Still serving, with the document intact.
            assert await server_copy(client, fake, URI, text) == text
            # Nothing of this was put in front of the user; the log has it.
            assert client.messages == []
            assert any("InvalidParams" in m.message or "Invalid Params" in m.message
                       for m in client.log_messages)
        finally:
            await stop_client(client)


async def test_notification_methods_sent_as_requests_are_answered_and_applied(
    tmp_path: Path,
) -> None:
    """A client that puts an id on didChange must get an answer, and the edit
    must still reach the server's copy of the document."""
    text = "k = \n"
    with FakeUpstream(Reply(text="7")) as fake:
        client = await _start(tmp_path, fake)
        try:
            open_doc(client, URI, text)
            change = {"textDocument": {"uri": URI, "version": 2},
                      "contentChanges": [{"range": {"start": {"line": 0, "character": 0},
                                                    "end": {"line": 0, "character": 0}},
                                          "text": "total_"}]}
            assert await raw_request(client, "textDocument/didChange", change) is None
            assert await raw_request(client, "$/setTrace", {"value": "off"}) is None
            assert await server_copy(client, fake, URI, "total_" + text) == "total_" + text
        finally:
            await stop_client(client)


async def test_fifty_megabyte_document(tmp_path: Path) -> None:
    line = "value = compute(alpha, beta)  # padding padding padding\n"
    count = 50_000_000 // len(line) + 1
    text = line * count
    mid = count // 2
    with FakeUpstream(Reply(text="ok")) as fake:
        client = await _start(tmp_path, fake, QWEN_LSP_MAX_FILE_BYTES="100000000")
        try:
            open_doc(client, URI, text)
            # Edits at the start, in the middle and at the end.
            edit(client, URI, 2, (0, 0), (0, 5), "FIRST")
            edit(client, URI, 3, (mid, 0), (mid, len(line) - 1), "middle = ")
            edit(client, URI, 4, (count, 0), (count, 0), "LAST = ")
            res = await asyncio.wait_for(inline(client, URI, mid, 9), 60.0)
            assert res is not None and res.items[0].insert_text == "ok"
            prefix, suffix = prompt_parts(fake.requests[-1].json["prompt"])
            assert prefix.endswith(line + "middle = ")
            assert suffix.startswith("\n" + line)
            # The start of the file, through a completion on its second line.
            await inline(client, URI, 1, 0)
            prefix, _ = prompt_parts(fake.requests[-1].json["prompt"])
            assert prefix == "FIRST" + line[5:]
            # The end of the file.
            await inline(client, URI, count, 7)
            prefix, suffix = prompt_parts(fake.requests[-1].json["prompt"])
            assert prefix.endswith(line + "LAST = ") and suffix == ""
        finally:
            await stop_client(client)
    assert len(fake.requests) == 3


async def test_file_above_the_size_cap_is_not_sent(tmp_path: Path) -> None:
    with FakeUpstream(Reply(text="ok")) as fake:
        client = await _start(tmp_path, fake, QWEN_LSP_MAX_FILE_BYTES="1000")
        try:
            open_doc(client, URI, "x = 1\n" * 200 + "y = ")
            assert await inline(client, URI, 200, 4) is None
            open_doc(client, "file:///work/proj/small.py", "y = ")
            assert await inline(client, "file:///work/proj/small.py", 0, 4) is not None
        finally:
            await stop_client(client)
    assert len(fake.requests) == 1
    assert "x = 1" not in fake.requests[0].body.decode()


def test_cli_complete_reads_invalid_utf8(tmp_path: Path) -> None:
    """`qwen-lsp complete` on a file with invalid UTF-8 bytes: no crash, valid JSON out."""
    src = tmp_path / "broken.py"
    src.write_bytes(b"name = 'caf\xe9 \xff\xfe'\nvalue = ")
    with FakeUpstream(Reply(text="42")) as fake:
        env = server_env(tmp_path, QWEN_LSP_PROVIDER="openai",
                         QWEN_LSP_BASE_URL=fake.openai_base)
        proc = subprocess.run(
            [sys.executable, "-m", "qwen_lsp", "complete", f"{src}:2:9"],
            env=env, capture_output=True, timeout=60, cwd=str(ROOT), check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout.decode() == "42\n"
    body = fake.requests[-1].body
    body.decode("utf-8")  # what went upstream is valid UTF-8
    prefix, suffix = prompt_parts(fake.requests[-1].json["prompt"])
    assert prefix == "name = 'caf\ufffd \ufffd\ufffd'\nvalue = " and suffix == ""
