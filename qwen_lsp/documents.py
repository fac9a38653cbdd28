"""The server's copy of each open document, kept exactly equal to the client's.

pygls' own TextDocument splits lines with ``str.splitlines`` (which also breaks
on ``\\x0b``, ``\\x0c``, ``\\u2028`` …, unlike LSP), rescans the whole text for
every position and silently clamps out-of-range edits. Completion needs exact
offsets on every keystroke, so documents live here instead: the text as one
``str``, LSP line starts (``\\n``, ``\\r\\n``, ``\\r`` only) computed once per
version, and position conversion in the negotiated encoding.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from qwen_lsp.exclude import is_text

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

UTF8 = "utf-8"
UTF16 = "utf-16"
UTF32 = "utf-32"


class PositionError(ValueError):
    """A position or range that does not exist in the document."""


def _units(ch: str, encoding: str) -> int:
    cp = ord(ch)
    if encoding == UTF16:
        return 2 if cp > 0xFFFF else 1
    if encoding == UTF8:
        if cp < 0x80:
            return 1
        if cp < 0x800:
            return 2
        if cp < 0x10000:
            return 3  # includes lone surrogates (encoded as 3 bytes, surrogatepass)
        return 4
    return 1


def units_len(text: str, encoding: str) -> int:
    """Length of ``text`` in code units of ``encoding``."""
    if encoding == UTF32:
        return len(text)
    if text.isascii():
        return len(text)
    if encoding == UTF16:
        return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)
    return sum(_units(c, encoding) for c in text)


def column_to_units(line: str, column: int, encoding: str) -> int:
    """Code-point column -> client units."""
    return units_len(line[:column], encoding)


def units_to_column(line: str, units: int, encoding: str) -> int:
    """Client units -> code-point column, clamped to the line end.

    A position inside a multi-unit character is rounded down to its start.
    """
    if encoding == UTF32 or line.isascii():
        return min(units, len(line))
    acc = 0
    for i, ch in enumerate(line):
        step = _units(ch, encoding)
        if acc + step > units:
            return i
        acc += step
    return len(line)


def utf8_size_above(text: str, limit: int) -> bool:
    """True when ``text`` takes more than ``limit`` bytes as UTF-8.

    Counting characters settles most cases without encoding anything: a
    character takes one to four bytes.
    """
    if len(text) > limit:
        return True
    if len(text) * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


EDIT_LOG = 256


def _common_prefix(a: str, b: str, limit: int) -> int:
    lo, hi = 0, limit
    while lo < hi:  # binary search: string comparisons run in C
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _changed_span(old: str, new: str) -> tuple[int, int, int]:
    """The change from ``old`` to ``new`` as one span: (start, end in old, new length)."""
    limit = min(len(old), len(new))
    start = _common_prefix(old, new, limit)
    lo, hi = 0, limit - start
    while lo < hi:  # common suffix, not overlapping the prefix
        mid = (lo + hi + 1) // 2
        if old[len(old) - mid:] == new[len(new) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return start, len(old) - lo, len(new) - lo - start


@dataclass(slots=True)
class Document:
    uri: str
    text: str
    version: int = 0
    language_id: str = ""
    _starts: list[int] | None = field(default=None, repr=False)
    _size_memo: tuple[int, int, int, bool] | None = field(default=None, repr=False)
    _text_memo: tuple[int, int, bool] | None = field(default=None, repr=False)
    # Edits so far, and the last EDIT_LOG of them as (start, end, new length)
    # code-point spans (None: a full replacement), so that an offset in an
    # earlier text can be carried over to this one (see map_offset).
    edit_count: int = 0
    _edits: list[tuple[int, int, int] | None] = field(default_factory=list, repr=False)

    def larger_than(self, limit: int) -> bool:
        """Whether the UTF-8 text exceeds ``limit`` bytes (memoised per version)."""
        key = (self.version, len(self.text), limit)
        memo = self._size_memo
        if memo is not None and memo[:3] == key:
            return memo[3]
        above = utf8_size_above(self.text, limit)
        self._size_memo = (*key, above)
        return above

    def is_text(self) -> bool:
        """Whether the content is text, not binary (memoised per version)."""
        key = (self.version, len(self.text))
        memo = self._text_memo
        if memo is not None and memo[:2] == key:
            return memo[2]
        text = is_text(self.text)
        self._text_memo = (*key, text)
        return text

    # -- lines ---------------------------------------------------------------
    @property
    def line_starts(self) -> list[int]:
        if self._starts is None:
            self._starts = [0] + [m.end() for m in _LINE_BREAK.finditer(self.text)]
        return self._starts

    @property
    def line_count(self) -> int:
        return len(self.line_starts)

    def line_text(self, line: int) -> str:
        """The line's content without its terminator."""
        starts = self.line_starts
        start = starts[line]
        end = starts[line + 1] if line + 1 < len(starts) else len(self.text)
        raw = self.text[start:end]
        if raw.endswith("\r\n"):
            return raw[:-2]
        if raw.endswith(("\n", "\r")):
            return raw[:-1]
        return raw

    # -- positions -----------------------------------------------------------
    def offset_at(self, line: int, character: int, encoding: str, *, strict: bool) -> int:
        """Client position -> code-point offset into ``text``.

        strict=True raises PositionError for a line past the end or a negative
        value (completion requests); strict=False clamps like the LSP spec asks
        for edits (character past line end -> line end; line past EOF -> EOF).
        """
        if line < 0 or character < 0:
            raise PositionError(f"negative position {line}:{character}")
        starts = self.line_starts
        if line >= len(starts):
            if strict:
                raise PositionError(
                    f"line {line} is past the end of the document ({len(starts)} lines)"
                )
            return len(self.text)
        content = self.line_text(line)
        return starts[line] + units_to_column(content, character, encoding)

    def position_at(self, offset: int, encoding: str) -> tuple[int, int]:
        """Code-point offset -> client (line, character)."""
        starts = self.line_starts
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(starts, offset) - 1
        col = offset - starts[line]
        content = self.line_text(line)
        col = min(col, len(content))
        return line, column_to_units(content, col, encoding)

    # -- edits ---------------------------------------------------------------
    def _log(self, edit: tuple[int, int, int] | None) -> None:
        self.edit_count += 1
        self._edits.append(edit)
        if len(self._edits) > EDIT_LOG:
            del self._edits[: len(self._edits) - EDIT_LOG]

    def map_offset(self, offset: int, since: int, since_text: str) -> int:
        """Where ``offset`` into ``since_text`` (the text after ``since`` edits) is now.

        A cursor moves with the text typed at it or before it; one inside a
        replaced span ends up after the replacement. Edits older than the log,
        or full replacements, are seen as one change: the span between the
        common prefix and suffix of the two texts.
        """
        if since == self.edit_count:
            return offset
        back = self.edit_count - since
        edits = self._edits[-back:] if 0 < back <= len(self._edits) else [None]
        if any(e is None for e in edits):
            edits = [_changed_span(since_text, self.text)]
        for a, b, n in edits:  # type: ignore[misc]
            if offset >= b:
                offset += n - (b - a)
            elif offset > a:
                offset = a + n
        return max(0, min(offset, len(self.text)))

    def apply_full(self, text: str, version: int | None) -> None:
        self.text = text
        self._starts = None
        self._log(None)
        if version is not None:
            self.version = version

    def apply_incremental(
        self,
        start: tuple[int, int],
        end: tuple[int, int],
        new_text: str,
        encoding: str,
    ) -> None:
        """Apply one ranged change. Raises PositionError for an inverted range."""
        a = self.offset_at(start[0], start[1], encoding, strict=False)
        b = self.offset_at(end[0], end[1], encoding, strict=False)
        if b < a:
            raise PositionError(f"range end {end} is before its start {start}")
        old = self.text
        self.text = old[:a] + new_text + old[b:]
        self._starts = self._shift_starts(old, a, b, new_text)
        self._log((a, b, len(new_text)))

    def _shift_starts(self, old: str, a: int, b: int, new_text: str) -> list[int] | None:
        """Line starts after replacing old[a:b], without rescanning the text.

        Falls back to a rescan (None) when a ``\r`` is near the edit, where a
        ``\r\n`` pair could be split or joined.
        """
        starts = self._starts
        if starts is None or "\r" in new_text or old[a - 1 : a] == "\r" or "\r" in old[a:b + 1]:
            return None
        delta = len(new_text) - (b - a)
        lo = bisect.bisect_right(starts, a)  # starts[:lo] are <= a: unchanged
        hi = bisect.bisect_right(starts, b, lo)  # starts[lo:hi] lie inside the removed text
        inserted = [a + i + 1 for i, ch in enumerate(new_text) if ch == "\n"]
        return starts[:lo] + inserted + [s + delta for s in starts[hi:]]


class DocumentStore:
    """All open documents by URI."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}

    def open(self, uri: str, text: str, version: int, language_id: str) -> Document:
        doc = Document(uri=uri, text=text, version=version, language_id=language_id)
        self._docs[uri] = doc
        return doc

    def get(self, uri: str) -> Document | None:
        return self._docs.get(uri)

    def close(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def __iter__(self):
        return iter(list(self._docs.values()))

    def __len__(self) -> int:
        return len(self._docs)
