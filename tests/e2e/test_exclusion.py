"""Private files never reach the upstream, as the current file or as context.

The loopback upstream records every byte it receives; each private file
carries a unique marker that must appear in none of them, while an ordinary
neighbouring file's marker does (so cross-file context was really in use).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import inline, open_doc, openai_env, start_client, stop_client

PRIVATE = [".env", ".env.local", "server.pem", "deploy.key", "id_rsa", "id_rsa.pub",
           "cert.p12", "cert.pfx", "secrets.yaml", "credentials.json", ".git/config",
           "sub/.git/hooks/pre-commit", "private/notes.py"]


def _marker(name: str) -> str:
    return "PRIVATE_" + "".join(c if c.isalnum() else "_" for c in name).upper()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed for .gitignore")
async def test_private_files_are_never_sent(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    # A throwaway repository, only so that `git check-ignore` can answer.
    await asyncio.to_thread(subprocess.run, ["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("private/\n")
    files = {name: f"token = '{_marker(name)}'\n" for name in PRIVATE}
    files["helper.py"] = "def helper():\n    return 'ALLOWED_NEIGHBOUR'\n"
    files["big.py"] = "blob = 'TOO_BIG_NEIGHBOUR'\n" + "# filler line\n" * 400
    files["main.py"] = "import helper\nresult = "
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    with FakeUpstream(Reply(text="helper.helper()")) as fake:
        env = openai_env(tmp_path, fake.openai_base, QWEN_LSP_RESPECT_GITIGNORE="true",
                         QWEN_LSP_MAX_FILE_BYTES="4000")
        client = await start_client(env, root=root)
        try:
            for name, text in files.items():
                open_doc(client, (root / name).as_uri(), text)
            # Completing inside a private file sends nothing.
            for name in PRIVATE:
                line = files[name].split("\n")[0]
                assert await inline(client, (root / name).as_uri(), 0, len(line)) is None
            assert fake.requests == []
            # Completing in an ordinary file sends only ordinary context.
            res = await inline(client, (root / "main.py").as_uri(), 1, 9)
            assert res is not None
            # The size cap applies to the current file too.
            assert await inline(client, (root / "big.py").as_uri(), 0, 5) is None
        finally:
            await stop_client(client)

    assert len(fake.requests) == 1
    sent = b"".join(r.body + repr(r.headers).encode() for r in fake.requests).decode()
    assert "ALLOWED_NEIGHBOUR" in sent  # cross-file context was in use
    assert "TOO_BIG_NEIGHBOUR" not in sent
    for name in PRIVATE:
        assert _marker(name) not in sent, name
