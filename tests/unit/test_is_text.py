"""The one check that keeps binary content from being sent: table-driven."""

from __future__ import annotations

import pytest

from qwen_lsp.exclude import is_text

CASES: list[tuple[str, str | bytes, bool]] = [
    ("empty text", "", True),
    ("empty bytes", b"", True),
    ("code", "def f():\n\treturn 1\r\n", True),
    ("form feed, escape", "a\x0c\x1b[0m b", True),
    ("non-ASCII", "s = 'héllo 🌍'\n", True),
    ("UTF-8 bytes", "s = 'héllo 🌍'\n".encode(), True),
    ("Latin-1 bytes", "Ça coûte très cher à Noël, évidemment.\n".encode("latin-1"), True),
    ("a few U+FFFD", "name = 'caf\ufffd'\n", True),
    ("NUL in text", "x = 1\0", False),
    ("NUL in bytes", b"x = 1\n" * 10_000 + b"\0", False),
    ("NUL past the sample", "x = 1\n" * 20_000 + "\0", False),
    ("mostly U+FFFD", "x = " + "\ufffd" * 10, False),
    ("mostly invalid UTF-8", b"x = " + bytes(range(0x80, 0x100)), False),
    ("mostly control characters", "\x01\x02\x03\x04 ok", False),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_is_text(data: str | bytes, expected: bool) -> None:
    assert is_text(data) is expected


def test_a_compiled_binary_is_not_text() -> None:
    with open("/bin/ls", "rb") as f:
        raw = f.read()
    assert not is_text(raw)
    # The editor's copy: decoded with replacement characters.
    assert not is_text(raw.decode("utf-8", errors="replace"))
