"""Carrying a request's cursor over edits that arrived after it."""

from __future__ import annotations

import pytest

from qwen_lsp.documents import EDIT_LOG, UTF16, Document


def _doc(text: str) -> Document:
    return Document(uri="file:///t.py", text=text)


@pytest.mark.parametrize(("edits", "cursor", "expected"), [
    ([((0, 6), (0, 6), "d")], 6, 7),  # typed at the cursor: the cursor follows
    ([((0, 6), (0, 6), "d"), ((0, 7), (0, 7), "(")], 6, 8),
    ([((0, 5), (0, 6), "")], 6, 5),  # backspace before the cursor
    ([((0, 0), (0, 0), "# c\n")], 6, 10),  # a line inserted above
    ([((0, 6), (0, 6), "zz")], 2, 2),  # typed after the cursor: it stays
    ([((0, 1), (0, 5), "yy")], 3, 3),  # inside a replaced span: after the replacement
])
def test_incremental_edits(edits, cursor, expected) -> None:
    doc = _doc("x = ad\n")
    since, text = doc.edit_count, doc.text
    for start, end, new in edits:
        doc.apply_incremental(start, end, new, UTF16)
    assert doc.map_offset(cursor, since, text) == expected


def test_full_replacement_falls_back_to_the_changed_span() -> None:
    doc = _doc("def f():\n    return\n")
    since, text = doc.edit_count, doc.text
    doc.apply_full("def f():\n    return 42\n", None)
    assert doc.map_offset(19, since, text) == 22  # after "return", now after "return 42"
    assert doc.map_offset(3, since, text) == 3


def test_edits_older_than_the_log_fall_back_to_the_changed_span() -> None:
    doc = _doc("")
    since, text = doc.edit_count, doc.text
    for i in range(EDIT_LOG + 10):
        doc.apply_incremental((0, i), (0, i), "a", UTF16)
    assert doc.map_offset(0, since, text) == EDIT_LOG + 10


def test_no_edits_keeps_the_offset() -> None:
    doc = _doc("abc")
    assert doc.map_offset(2, doc.edit_count, doc.text) == 2
