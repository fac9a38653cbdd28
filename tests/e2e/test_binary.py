"""Binary content is never sent upstream: not as the current file, not as context.

"Binary" is a NUL anywhere, or mostly invalid UTF-8. The editor sends its own
decoding of such a file (U+FFFD for each undecodable byte, NULs kept); files
read from disk are bytes. The loopback upstream records every byte it gets.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from qwen_lsp.neighbours import SHORT_TTL
from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import (
    clear_cache,
    complete,
    inline,
    open_doc,
    openai_env,
    start_client,
    stop_client,
)

# Bytes that are not UTF-8 (each one decodes to U+FFFD), with no NUL among them.
JUNK = bytes(range(0x80, 0x100)) * 4


def _module(marker: str, junk: str | bytes, *, head: int = 0) -> bytes:
    """A Python-looking module that defines ``value()`` and carries binary junk."""
    code = f"def value():\n    return '{marker}'\n".encode()
    pad = b"# filler\n" * head
    return pad + code + (junk.encode("utf-8") if isinstance(junk, str) else junk)


# name -> (how it reaches the server, content)
NEIGHBOURS: dict[str, tuple[str, bytes]] = {
    # On disk: a NUL far past the first few kB, and invalid UTF-8 with no NUL.
    "disk_nul": ("disk", _module("DISK_NUL_MARKER", b"\0", head=600)),
    "disk_junk": ("disk", _module("DISK_JUNK_MARKER", JUNK)),
    # Open in the editor: its decoded text.
    "open_nul": ("open", _module("OPEN_NUL_MARKER", "\0\x01\x02" * 20)),
    "open_fffd": ("open", _module("OPEN_FFFD_MARKER", "\ufffd" * 400)),
}


async def test_binary_documents_get_no_completion_and_no_request(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    ls_copy = Path("/bin/ls").read_bytes()[:20000]
    docs = {
        # What an editor holds for a copy of `ls`: NULs and U+FFFD.
        "ls.py": ls_copy.decode("utf-8", errors="replace"),
        "garbled.py": "x = " + "\ufffd" * 40,
        "controls.py": "y = " + "\x01\x02\x03\x04\x05" * 10,
    }
    with FakeUpstream(Reply(text="1")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base), root=root)
        try:
            for name, text in docs.items():
                uri = (root / name).as_uri()
                open_doc(client, uri, text)
                line = text.count("\n")
                col = len(text) - text.rfind("\n") - 1
                assert await inline(client, uri, line, col) is None, name
                res = await complete(client, uri, line, col)
                assert res is None or not res.items, name
            assert fake.requests == []
            # A text file with a few undecodable bytes (a Latin-1 "é") still completes.
            uri = (root / "latin.py").as_uri()
            open_doc(client, uri, "name = 'caf\ufffd'\nx = ")
            assert await inline(client, uri, 1, 4) is not None
        finally:
            await stop_client(client)
    assert len(fake.requests) == 1


async def test_binary_files_are_never_cross_file_context(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "helper.py").write_text("def value():\n    return 'an ordinary neighbour'\n")
    mains: dict[str, str] = {}
    for name, (where, content) in NEIGHBOURS.items():
        if where == "disk":
            (root / f"{name}.py").write_bytes(content)
        # One file per neighbour, so that each prompt has room for both imports.
        mains[name] = f"import helper\nimport {name}\n\nprint(helper.value(), {name}.value())\nz = "

    with FakeUpstream(Reply(text="0")) as fake:
        client = await start_client(openai_env(tmp_path, fake.openai_base), root=root)
        try:
            for name, (where, content) in NEIGHBOURS.items():
                if where == "open":
                    open_doc(client, (root / f"{name}.py").as_uri(),
                             content.decode("utf-8"))
            for name, text in mains.items():
                uri = (root / f"main_{name}.py").as_uri()
                (root / f"main_{name}.py").write_text(text)
                open_doc(client, uri, text)
                fake.clear()
                # On a busy machine the context search can run out of its time
                # budget while file caches are cold; its short-lived result
                # is then replaced by a complete one.
                for attempt in range(4):
                    if attempt:
                        await asyncio.sleep(SHORT_TTL + 0.2)
                    await clear_cache(client)
                    assert await inline(client, uri, 4, 4) is not None, name
                    if "<|file_sep|>helper.py\n" in fake.requests[-1].json["prompt"]:
                        break
                prompt = "".join(r.json["prompt"] for r in fake.requests)
                # Cross-file context was in use, without any binary file in it.
                assert "<|file_sep|>helper.py\n" in prompt, name
                for other in NEIGHBOURS:
                    assert f"<|file_sep|>{other}.py\n" not in prompt, (name, other)
                    assert other.upper() + "_MARKER" not in prompt, (name, other)
        finally:
            await stop_client(client)
