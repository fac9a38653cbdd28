"""Property tests: random incremental edits keep ``Document`` equal to a reference.

The reference is deliberately simple and independent of the code under test:
it keeps the text as a plain string, picks each edit as a pair of code-point
offsets, and turns them into LSP positions by encoding the line prefix with
Python's own codecs. The document must land every edit at the same place.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_lsp.documents import UTF8, UTF16, UTF32, Document, PositionError

# Single characters and short pieces that stress position conversion: astral
# characters (two UTF-16 units, four UTF-8 bytes), combining marks, every LSP
# line break, and characters that are *not* LSP line breaks.
PIECES = ["a", "Z", " ", "\t", "é", "€", "ß", "😀", "𝔸", "e\u0301", "\u0301", "中",
          "\n", "\r", "\r\n", "\u2028", "\x0b", "\x0c", "\x85", "\x00"]
CODECS = {UTF8: ("utf-8", 1), UTF16: ("utf-16-le", 2), UTF32: ("utf-32-le", 4)}

texts = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)


def ref_line_starts(text: str) -> list[int]:
    starts = [0]
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\r" and i + 1 < len(text) and text[i + 1] == "\n":
            i += 2
            starts.append(i)
            continue
        i += 1
        if ch in "\r\n":
            starts.append(i)
    return starts


def ref_line_content(text: str, starts: list[int], line: int) -> str:
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    raw = text[starts[line]:end]
    for term in ("\r\n", "\n", "\r"):
        if raw.endswith(term):
            return raw[: -len(term)]
    return raw


def units(s: str, encoding: str) -> int:
    codec, width = CODECS[encoding]
    return len(s.encode(codec)) // width


def ref_position(text: str, offset: int, encoding: str) -> tuple[int, int]:
    starts = ref_line_starts(text)
    line = max(i for i, s in enumerate(starts) if s <= offset)
    return line, units(text[starts[line]:offset], encoding)


def splits_crlf(text: str, offset: int) -> bool:
    """No LSP position can point between the two characters of a \\r\\n."""
    return 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n"


@st.composite
def edit_scripts(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, float, float, str]]]:
    encoding = draw(st.sampled_from([UTF8, UTF16, UTF32]))
    start = draw(texts)
    steps = draw(st.lists(
        st.tuples(st.sampled_from(["range", "past-line-end", "past-eof"]),
                  st.floats(0, 1), st.floats(0, 1), texts),
        min_size=1, max_size=15))
    return encoding, start, steps


def check_equal(doc: Document, text: str, encoding: str) -> None:
    assert doc.text == text
    starts = ref_line_starts(text)
    assert doc.line_count == len(starts)
    for line in range(len(starts)):
        content = ref_line_content(text, starts, line)
        assert doc.line_text(line) == content
        # Both ends of every line convert exactly, in both directions.
        for offset in (starts[line], starts[line] + len(content)):
            pos = ref_position(text, offset, encoding)
            assert doc.position_at(offset, encoding) == pos
            assert doc.offset_at(*pos, encoding, strict=True) == offset


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edit_scripts())
def test_random_edits_match_the_reference(script: tuple[str, str, list]) -> None:
    encoding, text, steps = script
    doc = Document(uri="file:///fuzz.txt", text=text)
    for kind, fa, fb, new in steps:
        a, b = sorted((round(fa * len(text)), round(fb * len(text))))
        a -= splits_crlf(text, a)
        b -= splits_crlf(text, b)
        start = ref_position(text, a, encoding)
        end = ref_position(text, b, encoding)
        if kind == "past-line-end":
            # LSP: a character past the line end means the line end.
            line = end[0]
            starts = ref_line_starts(text)
            content = ref_line_content(text, starts, line)
            end = (line, units(content, encoding) + 5)
            b = starts[line] + len(content)
            if b < a:
                a, start = b, ref_position(text, b, encoding)
        elif kind == "past-eof":
            end = (len(ref_line_starts(text)) + 3, 0)
            b = len(text)
        doc.apply_incremental(start, end, new, encoding)
        text = text[:a] + new + text[b:]
        check_equal(doc, text, encoding)


@settings(max_examples=200, deadline=None)
@given(texts, st.sampled_from([UTF8, UTF16]), st.data())
def test_position_inside_a_character_rounds_down(text: str, encoding: str,
                                                 data: st.DataObject) -> None:
    """A unit offset inside a multi-unit character means that character's start."""
    doc = Document(uri="file:///fuzz.txt", text=text)
    wide = [i for i, c in enumerate(text) if units(c, encoding) > 1 and c not in "\r\n"]
    if not wide:
        return
    i = data.draw(st.sampled_from(wide))
    line, col = ref_position(text, i, encoding)
    inside = data.draw(st.integers(1, units(text[i], encoding) - 1))
    assert doc.offset_at(line, col + inside, encoding, strict=True) == i


@given(texts, st.integers(-5, -1), st.integers(-5, 5))
def test_negative_and_missing_lines_are_refused_when_strict(text: str, neg: int,
                                                            col: int) -> None:
    doc = Document(uri="file:///fuzz.txt", text=text)
    for line, character in ((neg, max(col, 0)), (0, neg), (doc.line_count, 0)):
        try:
            doc.offset_at(line, character, UTF16, strict=True)
        except PositionError:
            continue
        raise AssertionError(f"{line}:{character} accepted in {text!r}")
