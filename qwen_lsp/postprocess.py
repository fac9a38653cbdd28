"""Ordered, pure post-processing filters for code-completion model output.

Every filter is a small function ``(text, ctx) -> text`` (the suffix-overlap
filter returns a :class:`Suggestion`, because it also decides how many
characters after the cursor the text replaces). :data:`PIPELINE` lists them in
the order :func:`postprocess` runs them, so tests and benchmarks can run any
subset through :func:`run_filters`.

:func:`stream_should_stop` applies the same rules to a partial stream so the
engine can close the HTTP response as soon as further output could not survive
post-processing.

Nothing here does I/O; the only state is a small memo of prefix/suffix scans.
"""

from __future__ import annotations

import ast
import builtins
import keyword
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from functools import lru_cache

from qwen_lsp.context import LINE_CONTINUES, document_names, ends_finished_line
from qwen_lsp.providers.base import QWEN_SPECIAL_TOKENS

__all__ = [
    "PIPELINE",
    "PostContext",
    "Suggestion",
    "cut_repetition",
    "cut_special_tokens",
    "drop_doubled_space",
    "drop_empty",
    "drop_prose",
    "drop_suffix_copy",
    "fit_leading_newline",
    "keep_header_for_body",
    "limit_scope",
    "merge_suffix_overlap",
    "normalize_indentation",
    "postprocess",
    "run_filters",
    "stream_should_stop",
    "strip_invented_comment",
    "strip_prefix_echo",
    "trim_single_line",
    "trim_trailing_whitespace",
]


# --------------------------------------------------------------------------- records


def _leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


@dataclass(frozen=True, slots=True)
class PostContext:
    """The document around the cursor, as the filters need it."""

    prefix: str  # document text before the cursor (may be a window)
    suffix: str  # document text after the cursor (window)
    language: str = ""  # LSP languageId, e.g. "python"
    multiline: bool = True  # False: single-line mode
    indent_unit: str = "    "  # "\t" or N spaces
    # The whole text (CompletionContext.document); empty: only the windows
    # are looked at for names.
    document: str = field(default="", compare=False, repr=False)

    @property
    def line_prefix(self) -> str:
        """Text of the cursor line before the cursor."""
        return self.prefix[self.prefix.rfind("\n") + 1 :]

    @property
    def line_suffix(self) -> str:
        """Text of the cursor line after the cursor."""
        return self.suffix.split("\n", 1)[0].rstrip("\r")

    @property
    def following_lines(self) -> tuple[str, ...]:
        """The suffix lines after the cursor line."""
        return tuple(line.rstrip("\r") for line in self.suffix.split("\n")[1:])

    @property
    def cursor_indent(self) -> str:
        """Leading whitespace of the cursor line."""
        return _leading_ws(self.line_prefix + self.line_suffix)


@dataclass(frozen=True, slots=True)
class Suggestion:
    text: str  # text to insert at the cursor
    replace_suffix_chars: int = 0  # chars of line_suffix (right after the cursor) it replaces


# --------------------------------------------------------------------------- helpers

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")": "(", "]": "[", "}": "{"}
# Characters that may sit after the cursor and be "typed over" by a completion.
_CLOSING_PUNCT = frozenset(")]}>\"'`;:,.")

_HASH_COMMENTS = frozenset(
    [
        "python",
        "ruby",
        "shellscript",
        "sh",
        "bash",
        "zsh",
        "perl",
        "r",
        "yaml",
        "toml",
        "makefile",
        "dockerfile",
        "powershell",
        "elixir",
        "julia",
        "nim",
        "coffeescript",
        "cmake",
        "php",
    ]
)
_SLASH_COMMENTS = frozenset(
    [
        "c",
        "cpp",
        "objective-c",
        "objective-cpp",
        "cuda-cpp",
        "java",
        "javascript",
        "javascriptreact",
        "typescript",
        "typescriptreact",
        "go",
        "rust",
        "csharp",
        "kotlin",
        "swift",
        "scala",
        "dart",
        "php",
        "zig",
        "jsonc",
        "json",
        "groovy",
        "proto",
        "glsl",
        "hlsl",
        "solidity",
    ]
)
_BACKTICK_LANGS = frozenset(
    ["javascript", "javascriptreact", "typescript", "typescriptreact", "go"]
)
_TRIPLE_QUOTE_LANGS = frozenset(["python", "kotlin", "scala", "swift"])
_MARKDOWN_LANGS = frozenset(["markdown", "mdx"])

# Keywords that continue a statement at the level of its header (if/try/switch ...).
_CONTINUATION = re.compile(
    r"(else\b|elif\b|elsif\b|except\b|finally\b|catch\b|case\b|default\b|rescue\b|ensure\b"
    r"|when\b|\}\s*(else|catch|finally|while)\b)"
)

_CONTINUATION_WORDS = (
    "else",
    "elif",
    "elsif",
    "except",
    "finally",
    "catch",
    "case",
    "default",
    "rescue",
    "ensure",
    "when",
)

_FENCE_LINE = re.compile(r"(?m)^[ \t]*```")
_LEADING_FENCE = re.compile(r"\s*```[\w+#.-]*[ \t]*\r?\n")


@dataclass(frozen=True, slots=True)
class _Syntax:
    hash_comments: bool
    slash_comments: bool
    quotes: tuple[str, ...]  # longest first
    rust_chars: bool  # "'" is a char literal only when it looks like one


@lru_cache(maxsize=64)
def _syntax(language: str) -> _Syntax:
    lang = language.lower()
    known = lang in _HASH_COMMENTS or lang in _SLASH_COMMENTS
    quotes: list[str] = []
    if lang in _TRIPLE_QUOTE_LANGS or not lang:
        quotes += ['"""', "'''"]
    quotes += ['"', "'"]
    if lang in _BACKTICK_LANGS or not lang:
        quotes.append("`")
    return _Syntax(
        hash_comments=lang in _HASH_COMMENTS or not known,
        slash_comments=lang in _SLASH_COMMENTS or not known,
        quotes=tuple(quotes),
        rust_chars=lang == "rust",
    )


@dataclass(frozen=True, slots=True)
class _LexState:
    quote: str = ""  # the open string delimiter, if any
    comment: str = ""  # "", "line" or "block"


def _is_rust_char(text: str, i: int) -> bool:
    # 'a' or '\n' is a char literal; 'a in a lifetime is not.
    return (i + 1 < len(text) and text[i + 1] == "\\") or (i + 2 < len(text) and text[i + 2] == "'")


def _classify(text: str, syn: _Syntax, state: _LexState) -> tuple[str, _LexState]:
    """Label each char: c=code, s=string body, o=opening quote, x=closing quote, m=comment.

    A heuristic lexer: enough to keep brackets inside strings and comments out
    of the bracket balance. Single-char quotes end at a newline.
    """
    out: list[str] = []
    quote, comment = state.quote, state.comment
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if comment == "line":
            if ch == "\n":
                comment = ""
                out.append("c")
            else:
                out.append("m")
            i += 1
        elif comment == "block":
            if text.startswith("*/", i):
                out.append("mm")
                i += 2
                comment = ""
            else:
                out.append("m")
                i += 1
        elif quote:
            if ch == "\\" and i + 1 < n:
                out.append("ss")
                i += 2
            elif text.startswith(quote, i):
                out.append("x" * len(quote))
                i += len(quote)
                quote = ""
            elif ch == "\n" and len(quote) == 1 and quote != "`":
                quote = ""  # unterminated one-line string
                out.append("c")
                i += 1
            else:
                out.append("s")
                i += 1
        elif syn.hash_comments and ch == "#":
            comment = "line"
            out.append("m")
            i += 1
        elif syn.slash_comments and text.startswith("//", i):
            comment = "line"
            out.append("mm")
            i += 2
        elif syn.slash_comments and text.startswith("/*", i):
            comment = "block"
            out.append("mm")
            i += 2
        else:
            for delim in syn.quotes:
                if text.startswith(delim, i):
                    if delim == "'" and syn.rust_chars and not _is_rust_char(text, i):
                        continue
                    quote = delim
                    out.append("o" * len(delim))
                    i += len(delim)
                    break
            else:
                out.append("c")
                i += 1
    return "".join(out), _LexState(quote, comment)


@dataclass(frozen=True, slots=True)
class _Open:
    """A bracket the prefix leaves open."""

    char: str
    inline: bool  # opened on the cursor line
    indent: str  # leading whitespace of the line it was opened on
    line: int = 0  # that line's index in the prefix


@dataclass(frozen=True, slots=True)
class _PrefixInfo:
    state: _LexState  # lexer state at the cursor
    stack: tuple[_Open, ...]  # open brackets, outermost first


@lru_cache(maxsize=64)
def _prefix_info(prefix: str, language: str) -> _PrefixInfo:
    kinds, state = _classify(prefix, _syntax(language), _LexState())
    line_start = prefix.rfind("\n") + 1
    stack: list[_Open] = []
    start = 0  # start of the line being scanned
    line = 0
    for i, ch in enumerate(prefix):
        if ch == "\n":
            start = i + 1
            line += 1
        if kinds[i] != "c":
            continue
        if ch in _OPENERS:
            stack.append(_Open(ch, i >= line_start, _leading_ws(prefix[start:i]), line))
        elif ch in _CLOSERS:
            _pop_matching(stack, _CLOSERS[ch])
    return _PrefixInfo(state, tuple(stack))


def _pop_matching(stack: list[_Open], opener: str) -> _Open | None:
    """Pop down to the nearest ``opener``; ignore a closer with no match."""
    for depth in range(len(stack) - 1, -1, -1):
        if stack[depth].char == opener:
            item = stack[depth]
            del stack[depth:]
            return item
    return None


@lru_cache(maxsize=64)
def _suffix_closers(
    suffix: str, language: str, state: _LexState
) -> tuple[tuple[str, str | None], ...]:
    """The suffix's closers that close brackets opened before the cursor, in order.

    Each comes with the leading whitespace of its line when it is the first
    character there on a line after the cursor line (None otherwise).
    """
    kinds, _ = _classify(suffix, _syntax(language), state)
    depth = 0
    unmatched: list[tuple[str, str | None]] = []
    line_start = -1  # the cursor line has no known start
    for i, ch in enumerate(suffix):
        if ch == "\n":
            line_start = i + 1
        if kinds[i] != "c":
            continue
        if ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS:
            if depth:
                depth -= 1
                continue
            head = suffix[line_start:i] if line_start >= 0 else None
            unmatched.append((ch, head if head is not None and not head.strip(" \t") else None))
    return tuple(unmatched)


def _statement_indents(stack: Sequence[_Open], tab: int) -> list[int]:
    """Per open bracket, the indentation (columns) of the statement it belongs to.

    A line inside ``(`` or ``[`` opened on an earlier line is a continuation
    line: a bracket opened there belongs to the statement that opened the outer
    one (``foo(a,\n    b, function () {`` is closed by ``});`` at column 0).
    """
    out: list[int] = []
    for i, item in enumerate(stack):
        outer = stack[i - 1] if i else None
        if outer is not None and outer.char in "([" and outer.line != item.line:
            out.append(out[-1])
        else:
            out.append(_columns(item.indent, tab))
    return out


def _suffix_closer_count(
    suffix: str, language: str, state: _LexState, stack: Sequence[_Open], tab: int = 4
) -> int:
    """How many of the innermost open brackets the suffix closes.

    The suffix closes brackets from the inside out, so its first unmatched
    closer must fit the innermost opener, the next one the opener below, and
    so on; counting stops at the first misfit. (A line deleted after the
    cursor leaves an inner bracket open while later code closes outer ones;
    a plain count would wrongly credit the suffix with closing the inner one.)
    A closer that starts its line must also fit by indentation: one indented
    less than the statement that opened the bracket closes an outer bracket
    (the ``}`` of a function after the deleted ``}`` of its ``if``).
    """
    closers = _suffix_closers(suffix, language, state)
    depths: list[int] | None = None
    count = 0
    for k, (ch, indent) in enumerate(closers):
        if k >= len(stack) or stack[-1 - k].char != _CLOSERS[ch]:
            break
        if indent is not None:
            depths = depths or _statement_indents(stack, tab)
            if _columns(indent, tab) < depths[-1 - k]:
                break
        count += 1
    return count


def _tab_width(ctx: PostContext) -> int:
    return len(ctx.indent_unit) if ctx.indent_unit.strip(" ") == "" and ctx.indent_unit else 4


def _columns(ws: str, tab: int) -> int:
    return sum(tab if c == "\t" else 1 for c in ws)


def _render_indent(cols: int, ctx: PostContext) -> str:
    if ctx.indent_unit == "\t":
        return "\t" * (cols // 4) + " " * (cols % 4)
    return " " * cols


def _width(line: str, ctx: PostContext) -> int:
    return _columns(_leading_ws(line), _tab_width(ctx))


def _is_trivial(stripped: str) -> bool:
    """Lines like "}", ")", "end" that legitimately repeat."""
    return len(stripped) < 4 or not any(c.isalnum() for c in stripped)


def _next_nonblank(ctx: PostContext, limit: int = 3) -> list[str]:
    out: list[str] = []
    for line in ctx.following_lines:
        if line.strip():
            out.append(line)
            if len(out) == limit:
                break
    return out


def _similar(a: str, b: str) -> bool:
    if a == b:
        return True
    if min(len(a), len(b)) < 8:
        return False
    return SequenceMatcher(None, a, b, autojunk=False).ratio() >= 0.85


# --------------------------------------------------------------------------- 1. special tokens


def cut_special_tokens(text: str, ctx: PostContext) -> str:
    """Cut at the first Qwen special token or markdown fence; drop a leading fence."""
    fences = ctx.language.lower() not in _MARKDOWN_LANGS
    if fences:
        lead = _LEADING_FENCE.match(text)
        if lead:
            text = text[lead.end() :]
    cut = len(text)
    for token in QWEN_SPECIAL_TOKENS:
        at = text.find(token)
        if at != -1:
            cut = min(cut, at)
    if fences:
        fence = _FENCE_LINE.search(text)
        if fence:
            cut = min(cut, max(fence.start() - 1, 0))  # also drop the newline before it
    return text[:cut]


# --------------------------------------------------------------------------- 1b. prose

# Languages where a line of English outside comments and strings cannot be code.
# Data and build formats (YAML, TOML, Makefile, ...) and plain text are left alone.
_PROSE_CHECKED = (_HASH_COMMENTS | _SLASH_COMMENTS) - frozenset(
    ["yaml", "toml", "makefile", "dockerfile", "cmake", "json", "jsonc", "proto",
     "shellscript", "sh", "bash", "zsh", "powershell"])
_PROSE_WORD = re.compile(r"(?:[A-Za-z][A-Za-z'-]*|`[^`]*`)[,.:;!?]?")
_PROSE_GLUE = frozenset(
    ["the", "this", "that", "these", "is", "are", "was", "a", "an", "of", "to", "which", "it", "its", "you", "we", "will", "be", "can", "and", "for", "with", "in", "by", "as", "here"])
_PROSE_MIN_WORDS = 5


def _is_prose(code: str) -> bool:
    """A sentence: "This code defines a ...". ``code`` is the line's code characters."""
    words = code.split()
    if len(words) < _PROSE_MIN_WORDS:
        return False
    if not (re.fullmatch(r"[A-Z][a-z]+", words[0]) and re.fullmatch(r"[a-z]+", words[1])):
        return False
    if not all(_PROSE_WORD.fullmatch(w) for w in words):
        return False
    return sum(w.rstrip(",.:;!?").lower() in _PROSE_GLUE for w in words) >= 2


def drop_prose(text: str, ctx: PostContext) -> str:
    """Cut at the first line that is an English sentence written as code.

    The small model sometimes explains the file instead of continuing it (at
    the end of a file, most often). Only code characters count: a sentence in
    a comment or a string is left alone.
    """
    lang = ctx.language.lower()
    if lang not in _PROSE_CHECKED or not text.strip():
        return text
    state = _prefix_info(ctx.prefix, lang).state
    kinds, _ = _classify(text, _syntax(lang), state)
    start = 0
    for line in text.split("\n"):
        code = "".join(ch if kinds[start + i] == "c" else " " for i, ch in enumerate(line))
        if _is_prose(code):
            return text[:start].rstrip(" \t\r\n") if start else ""
        start += len(line) + 1
    return text


# --------------------------------------------------------------------------- 2. prefix echo

_ECHO_MAX_LINES = 5
_ECHO_MIN_CHARS = 4


def strip_prefix_echo(text: str, ctx: PostContext) -> str:
    """Remove an exact repeat of the cursor line's start (and maybe the lines above it).

    Partial-mode chat answers sometimes restart the current line or re-emit the
    last lines of the prefix. Only a clear repeat (at least a few non-blank
    characters, matched exactly) is removed; the longest one wins.
    """
    lines = ctx.prefix.split("\n")
    for k in range(min(_ECHO_MAX_LINES, len(lines) - 1), -1, -1):
        tail = "\n".join(lines[len(lines) - 1 - k :])
        for candidate in (tail, tail.lstrip()):
            if len(candidate.strip()) >= _ECHO_MIN_CHARS and text.startswith(candidate):
                return text[len(candidate) :]
    return text


def drop_line_echo(text: str, ctx: PostContext) -> str:
    """Remove the cursor line's start when the answer begins with it again.

    In the middle of a word the model may write the whole line from its start
    (``    i`` + ``    if l <= 0.5:``): read literally, that is the line's start
    twice. The start must be repeated exactly, indentation and all, and be
    indented or at least three characters long, or go on as the code right of
    the cursor does (``c`` + ``class TextIO`` before ``lass TextIO``; ``i`` +
    ``if y:`` before ``f x:`` could be meant).
    """
    start = ctx.line_prefix
    code = start.strip()
    if not code or not text.startswith(start):
        return text
    after = ctx.line_suffix[:3]
    if (start[:1].isspace() or len(code) >= 3
            or (len(after.strip()) == 3 and text[len(start):].startswith(after))):
        return text[len(start):]
    return text


def drop_doubled_space(text: str, ctx: PostContext) -> str:
    """Drop leading blanks of a completion when the cursor already follows a blank.

    Models tokenise a prompt that ends in a space badly and often start their
    answer with another one (partial mode: ``x = `` + `` foo``; on an indented
    blank line the body comes out one column too deep). Only a single leading
    space is dropped: a longer run may be a deliberate deeper indentation.
    """
    if ctx.line_prefix[-1:] in (" ", "\t") and text[:1] == " " and text[1:2] not in (
        "", " ", "\t", "\n", "\r"
    ):
        return text[1:]
    if text[:1] == " " and _WORD_START.match(text, 1) and _attribute_dot(ctx):
        return text[1:]  # "{p." + " name}": no name follows a dot after a space
    return text


_WORD_START = re.compile(r"[A-Za-z_]")
# A name and a dot right before the cursor.
_NAME_DOT = re.compile(r"(?:^|\W)[A-Za-z_]\w*\.$")


def _attribute_dot(ctx: PostContext) -> bool:
    """The cursor follows ``name.`` in code (or in an f-string's braces), where
    the next thing is a name: not the end of a sentence in prose."""
    if not _NAME_DOT.search(ctx.line_prefix):
        return False
    state = _prefix_info(ctx.prefix, ctx.language).state
    if state.comment:
        return False
    if state.quote:  # only inside an f-string's or a template's braces
        line = ctx.line_prefix
        return line.rfind("{") > max(line.rfind("}"), line.rfind(state.quote))
    return True


# --------------------------------------------------------------------------- 3. newline / single line


def _fit_indent(line: str, ctx: PostContext) -> str:
    """Drop from ``line``'s indentation what the cursor line already has."""
    tab = _tab_width(ctx)
    extra = _columns(_leading_ws(line), tab) - _columns(ctx.line_prefix, tab)
    ws = _leading_ws(line)
    if ws.startswith(ctx.line_prefix):
        kept = ws[len(ctx.line_prefix) :]
    else:
        kept = _render_indent(max(extra, 0), ctx)
    return kept + line.lstrip(" \t")


# Languages whose blocks open with a line ending in ":" (Python) or "{" (the
# C family), so that the line above a blank cursor line tells how deep the
# next line may go.
_INDENT_CAP_LANGS = frozenset({"python"}) | (_SLASH_COMMENTS - {"json", "jsonc", "proto"})
# A line starting like this continues the statement on the line above ("? a : b").
_LEADING_CONTINUES = ("?", ":", ".", "&&", "||", "+", "|", "&", "??")
# Brace-less control statements: "if (x)" may be followed by one deeper line.
_BRACELESS_HEADER = re.compile(r"\s*(?:\}\s*)?(?:if|for|foreach|while|else|do|using|lock)\b")


@lru_cache(maxsize=64)  # asked again for every streamed piece of one answer
def _indent_cap(ctx: PostContext) -> int | None:
    """The deepest indentation (columns) the first line at a blank cursor line may have.

    Small models often start a block body one level too deep (and close it
    one level too deep), where the line above leaves no doubt: after a
    statement the next line is no deeper, after a block opener one unit
    deeper. The editor's own indentation of the cursor line also counts.
    None where the line above does not decide it (inside ( or [, after a
    continued line, in languages whose block openers are not known here).
    """
    if ctx.language.lower() not in _INDENT_CAP_LANGS or ctx.cursor_indent != ctx.line_prefix:
        return None
    info = _prefix_info(ctx.prefix, ctx.language)
    if info.state.quote or info.state.comment == "block":
        return None
    if info.stack and info.stack[-1].char != "{":
        return None
    above = [line for line in ctx.prefix.rsplit("\n", 51)[-51:-1] if line.strip()]
    if not above:
        return None
    prev = above[-1].rstrip("\r")
    code = _strip_comment(prev, ctx)
    opens = _opens_block(code)
    if not code.strip() or code.endswith(LINE_CONTINUES) or (
        not opens and _BRACELESS_HEADER.match(code)
    ):
        return None
    tab = _tab_width(ctx)
    cap = _width(prev, ctx) + (_columns(ctx.indent_unit, tab) if opens else 0)
    return max(cap, _columns(ctx.line_prefix, tab))


def fit_leading_newline(text: str, ctx: PostContext) -> str:
    """At a blank cursor line, turn "\\n" + indented line into text for the cursor.

    A first line deeper than :func:`_indent_cap` allows is moved up to it,
    and the lines after it move by the same amount.
    """
    if ctx.line_prefix.strip() or not text.startswith(("\n", "\r\n")):
        return text
    rest = text[text.index("\n") + 1 :]
    first, sep, tail = rest.partition("\n")
    # A line that starts with an operator continues the statement above at any depth.
    leads = first.strip() and not first.lstrip().startswith(_LEADING_CONTINUES)
    cap = _indent_cap(ctx) if leads else None
    tab = _tab_width(ctx)
    over = 0 if cap is None else _columns(_leading_ws(first), tab) - cap
    if over <= 0:
        return _fit_indent(first, ctx) + sep + tail
    first = _render_indent(cap, ctx) + first.lstrip(" \t")
    moved = [
        _render_indent(max(0, _columns(_leading_ws(line), tab) - over), ctx) + line.lstrip(" \t")
        if line.strip() else line
        for line in tail.split("\n")
    ]
    return _fit_indent(first, ctx) + sep + "\n".join(moved)


def _line_done(ctx: PostContext) -> bool:
    return ends_finished_line(ctx.line_prefix, ctx.line_suffix)


def _invented_comment_line(line: str, ctx: PostContext) -> bool:
    """``line`` (the rest of the cursor line) is nothing but a comment after its code.

    Used at the end of a finished line, where the user is about to write the
    next line: a comment there gives way to that line in any file, also in
    one that puts comments after its code (after Tab in argparse.py, three
    of five suggestions were such comments).
    """
    return bool(line.strip()) and not strip_invented_comment(line, ctx, habit=False).strip()


def _before_code(ctx: PostContext) -> bool:
    """The cursor sits in a line's indentation, with the line's code right of it."""
    return not ctx.line_prefix.strip() and bool(ctx.line_suffix.strip())


def trim_single_line(text: str, ctx: PostContext) -> str:
    """Single-line mode keeps one line: the first non-empty one at a blank cursor line.

    At the end of a finished line, an answer whose first line is empty, or only
    a comment the model invented there (see :func:`strip_invented_comment`),
    offers the next line ("\n" + that line), as it would appear after Enter; a
    comment with nothing after it stays. Before the code of a line, a line the
    model ended is kept with its line break: it goes in above that code.
    """
    if ctx.multiline:
        return text
    lines = text.split("\n")
    if ctx.line_prefix.strip():
        first = lines[0]
        if not _line_done(ctx) or (first.strip() and not _invented_comment_line(first, ctx)):
            return first
        nxt = next((line for line in lines[1:] if line.strip()), "")
        return "\n" + nxt.rstrip("\r") if nxt else first
    for i, line in enumerate(lines):
        if line.strip():
            kept = line if i == 0 else _fit_indent(line.rstrip("\r"), ctx)
            return kept + "\n" if _before_code(ctx) and i + 1 < len(lines) else kept
    return ""


# --------------------------------------------------------------------------- 5. repetition

_UNIT_REPEATS = (
    re.compile(r"(.{1,2}?)\1{7,}$"),  # ")))))))))" / ",),),),),),),)"
    re.compile(r"(.{3,9}?)\1{4,}$"),  # "abcabcabcabcabc"
    re.compile(r"(.{10,}?)\1{2,}$"),  # a long phrase three times
)
_SEPARATOR_CHARS = frozenset("=-*#/_~+.<> \t")


def _line_end_loop(line: str) -> int | None:
    """Where to cut ``line`` if it ends with a unit repeated many times."""
    for pattern in _UNIT_REPEATS:
        m = pattern.search(line)
        if not m:
            continue
        unit = m.group(1)
        if set(unit) <= _SEPARATOR_CHARS:
            continue  # "# =========" rulers are fine
        if len(unit) <= 2 and any(c.isalnum() for c in unit):
            continue  # 0xFFFFFFFF, "00000000"
        if set(unit) <= set(_CLOSERS):
            # A run of closers: keep as many as the line has open brackets (at least one).
            head = line[: m.start()]
            wanted = sum(head.count(c) for c in _OPENERS) - sum(head.count(c) for c in _CLOSERS)
            return m.start() + max(wanted, 1)
        return m.start() + len(unit)
    return None


def _repeated_line(keys: Sequence[str]) -> int | None:
    """Index of the last line to keep when a line repeats 3+ times in a row."""
    for i in range(len(keys) - 2):
        if keys[i] and not _is_trivial(keys[i]) and keys[i] == keys[i + 1] == keys[i + 2]:
            return i
    return None


def _repeated_block(keys: Sequence[str]) -> int | None:
    """Index of the last line to keep when a block of 2+ lines loops (2.5+ copies)."""
    n_lines = len(keys)
    best: int | None = None
    for size in range(2, n_lines // 2 + 1):
        for i in range(n_lines - 2 * size):
            block = keys[i : i + size]
            if all(_is_trivial(k) for k in block):
                continue
            if keys[i + size : i + 2 * size] == block and keys[i + 2 * size] == keys[i]:
                end = i + size - 1
                best = end if best is None else min(best, end)
                break
    return best


def cut_repetition(text: str, ctx: PostContext) -> str:
    """Cut repetition loops, keeping the first copy and dropping what follows."""
    lines = text.split("\n")
    keys = [line.strip() for line in lines]
    cuts: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        at = _line_end_loop(line)
        if at is not None:
            cuts.append((i, line[:at]))
            break
    for finder in (_repeated_line, _repeated_block):
        last = finder(keys)
        if last is not None:
            cuts.append((last, lines[last]))
    if not cuts:
        return text
    last, kept = min(cuts, key=lambda c: c[0])
    return "\n".join([*lines[:last], kept])


# --------------------------------------------------------------------------- 4. scope


@dataclass(frozen=True, slots=True)
class _Cut:
    index: int  # the completion is text[:index]
    reason: str  # "dedent", "blank", "closer" (cut before a closer), "closed" (kept once)


def _opens_block(line: str) -> bool:
    stripped = line.rstrip()
    return stripped.endswith((":", "{"))


def _header_indent(ctx: PostContext, ref: int) -> int:
    """Indentation of the nearest prefix line above the cursor that is shallower than ``ref``."""
    lines = ctx.prefix.split("\n")[:-1]
    for line in reversed(lines[-200:]):
        if line.strip() and _width(line, ctx) < ref:
            return _width(line, ctx)
    return 0


def _scope_cut(text: str, ctx: PostContext) -> _Cut | None:
    """Where the completion leaves the cursor's scope, or None."""
    info = _prefix_info(ctx.prefix, ctx.language)
    kinds, _ = _classify(text, _syntax(ctx.language), info.state)
    suffix_closers = _suffix_closer_count(
        ctx.suffix, ctx.language, info.state, info.stack, _tab_width(ctx)
    )
    stack = list(info.stack)
    own: list[str] = []  # brackets opened by the completion
    closed = 0  # prefix brackets the completion has closed so far

    lines = text.split("\n")
    first = lines[0]
    if ctx.line_prefix.strip():
        ref = _columns(ctx.cursor_indent, _tab_width(ctx))
        strict = _opens_block(ctx.line_prefix + first)
    else:
        ref = _width(ctx.line_prefix + first, ctx)
        strict = False
    header = _header_indent(ctx, ref)
    following = _next_nonblank(ctx, 1)
    suffix_level = _width(following[0], ctx) if following else None
    last_code_width: int | None = ref if first.strip() else None
    # The cursor sits right after "(" or "[": multi-line is there for the
    # arguments only, so the completion ends with the line that closes that
    # bracket, unless the line opens a block ("if (a &&" -> "b) {").
    call = ctx.line_prefix.rstrip().endswith(("(", "["))

    start = 0
    for idx, line in enumerate(lines):
        end = start + len(line)
        stripped = line.strip()
        if idx > 0:
            if not stripped:
                if ctx.multiline and not own and last_code_width == ref and suffix_level == ref:
                    return _Cut(start - 1, "blank")
                start = end + 1
                continue
            width = _width(line, ctx)
            starts_with_closer = kinds[start + len(line) - len(line.lstrip())] == "c" and (
                stripped[0] in _CLOSERS
            )
            shallow = width < ref or (strict and width <= ref)
            continues = _CONTINUATION.match(stripped) is not None and width >= header
            if not starts_with_closer and shallow and not continues:
                return _Cut(start - 1, "dedent")
            last_code_width = width
        stop_after = False
        call_closed = False
        reopened: set[int] = set()  # openers that continue a block closed on this line
        for j in range(start, end):
            ch = text[j]
            if kinds[j] != "c" or j in reopened:
                continue
            if ch in _OPENERS:
                own.append(ch)
                continue
            if ch not in _CLOSERS:
                continue
            if own:
                own.pop()
                continue
            again = _reopener(text, kinds, j, end)
            if again is not None:
                # "} else {", "}, {", "}).then(() => {": the line closes a block
                # and opens the next one at the same level, which the suffix's
                # closer then closes. Neither bracket changes the balance.
                reopened.add(again)
                continue
            item = _pop_matching(stack, _CLOSERS[ch])
            if item is None:
                if idx == 0:
                    continue
                return _Cut(j, "closer")  # closes something we cannot see
            closed += 1
            inline = item.inline
            if idx == 0 and inline:
                call_closed = call_closed or call
                continue  # the cursor's own statement closes; overlap is merged later
            if suffix_closers >= closed:
                return _Cut(j, "closer")  # the suffix already closes it
            if not inline:
                stop_after = True  # keep the closing line once
            elif call:
                call_closed = True
        if stop_after and not own:
            return _Cut(end, "closed")
        if call_closed and not own and len(lines) > idx + 1:
            whole = ctx.line_prefix + line if idx == 0 else line
            if not _opens_block(_strip_comment(whole, ctx)):
                return _Cut(end, "closed")
        start = end + 1
    return None


def _reopener(text: str, kinds: str, at: int, end: int) -> int | None:
    """The opener in ``text[at + 1 : end]`` of the kind ``text[at]`` closes that is still
    open at ``end`` (the line goes on into the next block), or None."""
    want = _CLOSERS[text[at]]
    pending: list[int] = []
    for i in range(at + 1, end):
        if kinds[i] != "c":
            continue
        if text[i] == want:
            pending.append(i)
        elif text[i] == text[at] and pending:
            pending.pop()
    return pending[0] if pending else None


def _strip_comment(line: str, ctx: PostContext) -> str:
    """The line without a trailing line comment (for "x) {  // note")."""
    kinds, _ = _classify(line, _syntax(ctx.language), _LexState())
    for i, kind in enumerate(kinds):
        if kind == "m":
            return line[:i].rstrip()
    return line.rstrip()


def limit_scope(text: str, ctx: PostContext) -> str:
    """Stop at the end of the cursor's scope (indentation, bracket balance, blank line)."""
    cut = _scope_cut(text, ctx)
    if cut is None:
        return text
    return text[: cut.index].rstrip()


# --------------------------------------------------------------------------- 6. suffix copies


def drop_suffix_copy(text: str, ctx: PostContext) -> str:
    """Drop completion lines that reproduce the rest of the line or the next suffix lines."""
    lines = text.split("\n")
    rest_of_line = ctx.line_suffix.strip()
    if rest_of_line and lines[0].strip() == rest_of_line:
        return ""
    upcoming = [line.strip() for line in _next_nonblank(ctx)]
    if not upcoming:
        return text
    if not ctx.line_prefix.strip() and lines[0].strip() == upcoming[0]:
        return ""  # the whole completion starts by copying the next line
    if lines[0].strip() == upcoming[0] and len(upcoming[0]) >= 8:
        return ""  # mid-line, the rest of the line is the next line over again
    raw_upcoming = [line.rstrip() for line in _next_nonblank(ctx)]
    for j in range(1, len(lines)):
        key = lines[j].strip()
        if not key or not _similar(key, upcoming[0]):
            continue
        if not _is_trivial(key):
            return "\n".join(lines[:j]).rstrip()
        # "}" or "end": only a trailing run that copies the suffix line for line,
        # indentation included (a "}" closing the completion's own block stays).
        remaining = [line.rstrip() for line in lines[j:] if line.strip()]
        if remaining == raw_upcoming[: len(remaining)]:
            return "\n".join(lines[:j]).rstrip()
    return text


_BLOCK_OPENS = (":", "{")


def keep_header_for_body(text: str, ctx: PostContext) -> str:
    """A block header whose body is already there keeps its header line only.

    When the first line of the suggestion opens a block and the code after the
    cursor line is indented deeper than that line, the code below is the
    block's body (the line above it is missing, the header); the body the
    model goes on to write would be a second one.
    """
    lines = text.split("\n")
    at = next((i for i, line in enumerate(lines) if line.strip()), None)
    if at is None or at == len(lines) - 1:
        return text
    head = ctx.line_prefix + lines[at] if at == 0 else lines[at]
    if not _strip_comment(head, ctx).endswith(_BLOCK_OPENS):
        return text
    below = _next_nonblank(ctx, limit=1)
    tab = _tab_width(ctx)
    if not below or _columns(_leading_ws(below[0]), tab) <= _columns(_leading_ws(head), tab):
        return text
    return "\n".join(lines[: at + 1])


# --------------------------------------------------------------------------- 6b. invented comments

_COMMENT_WINDOW_LINES = 60  # prefix lines looked at for the file's own habit


def _trailing_comment_at(line: str, kinds: str) -> int | None:
    """Where a comment that follows code on ``line`` starts (None: no such comment)."""
    for i, kind in enumerate(kinds):
        if kind == "m":
            return i if line[:i].strip() else None
    return None


@lru_cache(maxsize=64)
def _file_has_trailing_comments(prefix: str, language: str) -> bool:
    """Does the code just above the cursor put comments after code on a line?"""
    tail = prefix.rsplit("\n", _COMMENT_WINDOW_LINES + 1)[1:-1]
    syn = _syntax(language)
    for line in tail:
        kinds, state = _classify(line, syn, _LexState())
        if state.comment == "block" or state.quote:
            continue
        if _trailing_comment_at(line, kinds) is not None:
            return True
    return False


def strip_invented_comment(text: str, ctx: PostContext, *, habit: bool = True) -> str:
    """Drop a comment the model put after the code of a line, in a file that has none.

    Small models like to end a line with ``  # Initialize an empty list``; the
    code before it is often exactly right. Only comments after code are
    dropped (a comment line stays), and only when none of the prefix's last
    lines carries such a comment, so a file that annotates its lines keeps
    the habit (``habit=False``: drop them in any file).
    """
    if habit and _file_has_trailing_comments(ctx.prefix, ctx.language):
        return text
    info = _prefix_info(ctx.prefix, ctx.language)
    if info.state.comment or info.state.quote:
        return text  # the cursor is inside a comment or string
    kinds, _ = _classify(text, _syntax(ctx.language), info.state)
    out: list[str] = []
    start = 0
    for idx, line in enumerate(text.split("\n")):
        line_kinds = kinds[start : start + len(line)]
        start += len(line) + 1
        head = ctx.line_prefix + line if idx == 0 else line
        at = _trailing_comment_at(head, (" " * len(ctx.line_prefix) if idx == 0 else "")
                                  + line_kinds)
        if at is not None and at >= (len(ctx.line_prefix) if idx == 0 else 0):
            cut = at - (len(ctx.line_prefix) if idx == 0 else 0)
            out.append(line[:cut].rstrip())
        else:
            out.append(line)
    return "\n".join(out)


# --------------------------------------------------------------------------- 7. suffix overlap


def _closers_ok(head: str, piece: str, ctx: PostContext) -> bool:
    """True when every bracket/quote in ``piece`` closes something opened before it.

    ``head`` is the completion text before ``piece``; a bracket closed in
    ``piece`` must not belong to an opener inside ``head``, and a quote must
    end a string rather than start one.
    """
    info = _prefix_info(ctx.prefix, ctx.language)
    kinds, _ = _classify(head + piece, _syntax(ctx.language), info.state)
    depth = 0
    for i, ch in enumerate(head):
        if kinds[i] == "c" and ch in _OPENERS:
            depth += 1
        elif kinds[i] == "c" and ch in _CLOSERS and depth:
            depth -= 1
    for i, ch in enumerate(piece, start=len(head)):
        kind = kinds[i]
        if kind == "o":
            return False
        if kind == "c" and ch in _CLOSERS:
            if depth:
                return False
        elif kind == "c" and ch in _OPENERS:
            return False
    return True


def is_closing_run(s: str) -> bool:
    """``s`` is only closers, punctuation and blanks: what a completion may type over."""
    return bool(s) and all(c in _CLOSING_PUNCT or c.isspace() for c in s)


def merge_suffix_overlap(text: str, ctx: PostContext) -> Suggestion:
    """Avoid doubling the text right after the cursor.

    If the rest of the line is only closers/punctuation (``)``, ``")``, ``);``)
    and the completion types them itself, replace them. Otherwise trim an
    overlap between the completion's end and the start of the rest of the line
    (one char is enough for closers, three otherwise).
    """
    rest = ctx.line_suffix.rstrip()
    if not rest or not text:
        return Suggestion(text)
    first, nl, _ = text.partition("\n")
    if is_closing_run(rest):
        # The first line types the closers, maybe followed by more punctuation (";").
        for k in range(len(rest), 0, -1):
            piece = rest[:k]
            at = first.rfind(piece)
            if at == -1 or first[at + k :].strip(" ;,") != "":
                continue
            if k < len(rest) and at + k != len(first):
                continue
            if _closers_ok(first[:at], piece, ctx):
                return Suggestion(text, k)
        # The first line closes the bracket the auto-paired closer belongs to
        # and goes on ("filename).st_ctime" before ")"): replace the closer.
        if rest[0] in _CLOSERS:
            info = _prefix_info(ctx.prefix, ctx.language)
            kinds, _ = _classify(first, _syntax(ctx.language), info.state)
            at = first.find(rest)
            while at != -1:
                if kinds[at] == "c" and _closers_ok(first[:at], rest, ctx):
                    return Suggestion(text, len(rest))
                at = first.find(rest, at + 1)
    elif nl and first.endswith(rest):
        # The model rewrote the rest of the line and went on: keep the line only.
        return Suggestion(first[: len(first) - len(rest)])
    if nl:
        return Suggestion(text)
    for k in range(min(len(text), len(rest)), 0, -1):
        piece = rest[:k]
        if not text.endswith(piece):
            continue
        if is_closing_run(piece):
            if _closers_ok(text[: len(text) - k], piece, ctx):
                return Suggestion(text[: len(text) - k])
        elif k >= 3:
            return Suggestion(text[: len(text) - k])
    return Suggestion(text)


_WORD_CHAR = re.compile(r"\w")
# A piece that starts as the rest of the line does (REWRITE_HEAD characters),
# ends as it does (REWRITE_TAIL), or ends its statement the same way (one of
# _LINE_ENDS) is the model's own version of the rest of the line.
REWRITE_HEAD, REWRITE_TAIL = 3, 6
_LINE_ENDS = frozenset(":;{)],")


def _bracket_depth(text: str, kinds: str) -> int:
    depth = 0
    for ch, kind in zip(text, kinds):
        if kind == "c" and ch in _OPENERS:
            depth += 1
        elif kind == "c" and ch in _CLOSERS:
            depth -= 1
    return depth


def rewrites_rest_of_line(text: str, rest: str) -> bool:
    """``text`` (one line) is the model's own version of ``rest``, the code
    right of the cursor, not a piece to insert in front of it."""
    if "\n" in text or len(text.strip()) < REWRITE_HEAD or not rest:
        return False
    return (text[:REWRITE_HEAD] == rest[:REWRITE_HEAD]
            or _common_len(text[::-1], rest[::-1]) >= REWRITE_TAIL
            or (text[-1] == rest[-1] and text[-1] in _LINE_ENDS))


# What a line of Python may need around it to parse on its own: a body, the
# statement an ``elif``/``else``/``except``/``finally`` belongs to, a function
# for ``return``/``await``.
_PY_LINE_FRAMES = ("{}", "{}\n pass", "if 1:\n pass\n{}\n pass", "try:\n pass\n{}\n pass")


@lru_cache(maxsize=512)
def _python_line_parses(line: str) -> bool:
    """``line`` parses as a statement of its own, given what it may need around it."""
    code = line.strip()
    for frame in _PY_LINE_FRAMES:
        body = frame.format(code).replace("\n", "\n  ")
        try:
            ast.parse("async def _():\n  " + body)
        except (SyntaxError, ValueError):
            continue
        return True
    return False


def _breaks_python_line(text: str, replaced: int, ctx: PostContext) -> bool:
    """The cursor line parsed on its own before and does not with ``text`` in."""
    if ctx.language.lower() != "python" or "\n" in text:
        return False
    line = ctx.line_prefix + ctx.line_suffix
    if not _python_line_parses(line):
        return False  # a line that goes on (brackets, a decorator): not judged here
    return not _python_line_parses(ctx.line_prefix + text + ctx.line_suffix[replaced:])


def fit_the_rest_of_the_line(text: str, ctx: PostContext) -> str | Suggestion:
    """In the middle of a line of code: an insertion that fits in front of
    the code that stays, or a rewrite of that code, or nothing.

    The model often writes a whole rest of the line of its own instead of the
    piece that fits at the cursor. Inserted, that is nonsense
    (``rom fileobj and added...`` in front of ``rom it and added...``): when
    the answer starts or ends as the rest of the line does, it replaces it
    (when it fits as such; ``self.y, `` in front of ``self.x)`` is a piece).
    Either way the line must stay balanced: an insertion closes as many
    brackets as it opens and leaves no string or comment open (``return
    (r|, g, b)`` + ``, y, i)`` would break the line), and glues no name to
    the name after it (``return |h, l, s`` + ``255*m1, 255*m2, 255*l`` makes
    ``255*lh``); a rewrite opens and closes as the code it replaces did. In
    Python, a cursor line that parsed on its own must still parse
    (``i| if isinstance(...)`` from ``if not isinstance(...)`` does not).
    Before the code of a line only a line of its own or a leading word goes in.
    Only for languages whose brackets and strings the lexer knows; where the
    rest of the line is closers only, merge_suffix_overlap has decided.
    """
    rest = ctx.line_suffix.rstrip()
    lang = ctx.language.lower()
    if (not rest.strip() or is_closing_run(rest.strip())
            or (lang not in _HASH_COMMENTS and lang not in _SLASH_COMMENTS)):
        return text
    # Before the code of a line: a line of its own goes in front of it
    # ("y = [x]\n    "), or a word the statement starts with ("return ").
    # "else:" glued in front of "elif stdout == DEVNULL:" is neither.
    if (not ctx.line_prefix.strip() and "\n" not in text
            and not (text[-1:].isspace() and not rest[:1].isspace())):
        return ""
    if (ctx.line_prefix.strip() and rewrites_rest_of_line(text, rest)
            and fits_as_rewrite(text, ctx)):
        return Suggestion(text, len(rest))
    # Not a rewrite that fits ("self.y, " in front of "self.x)"): maybe a piece.
    start = _prefix_info(ctx.prefix, ctx.language).state
    if start.comment:
        return text  # inside a comment: prose, no brackets to keep
    if not start.quote and _WORD_CHAR.match(text[-1:]) and _WORD_CHAR.match(ctx.line_suffix):
        return ""
    kinds, end = _classify(text, _syntax(ctx.language), start)
    if end != start or _bracket_depth(text, kinds) != 0 or _breaks_python_line(text, 0, ctx):
        return ""
    return text


def fits_as_rewrite(text: str, ctx: PostContext) -> bool:
    """``text`` (one line) can replace the rest of the cursor line: it leaves
    strings and comments open or closed as the code it replaces did, and as
    many brackets open at the end of the line, or fewer but not below none
    (``return sum(round(`` typed in front of ``item.price for item in
    items)``: the rewrite closes the new bracket too); in Python a line that
    parsed on its own still does."""
    rest = ctx.line_suffix.rstrip()
    if "\n" in text:
        return False
    lang = ctx.language.lower()
    if lang not in _HASH_COMMENTS and lang not in _SLASH_COMMENTS:
        return True  # nothing known to check
    info = _prefix_info(ctx.prefix, ctx.language)
    start = info.state
    if start.comment:
        return True  # prose: nothing to balance
    syntax = _syntax(ctx.language)
    kinds, end = _classify(text, syntax, start)
    rest_kinds, rest_end = _classify(rest, syntax, start)
    now = len(info.stack) + _bracket_depth(rest, rest_kinds)
    after = len(info.stack) + _bracket_depth(text, kinds)
    return (end == rest_end and (after == now or 0 <= after < now)
            and not _breaks_python_line(text, len(rest), ctx))


# --------------------------------------------------------------------------- 8. indentation


def normalize_indentation(text: str, ctx: PostContext) -> str:
    """Re-indent lines after the first in the document's unit, relative to the cursor line."""
    lines = text.split("\n")
    if len(lines) < 2:
        return text
    tab = _tab_width(ctx)
    base = _columns(ctx.cursor_indent, tab)
    body = [i for i in range(1, len(lines)) if lines[i].strip()]
    if not body:
        return text
    deltas = [_columns(_leading_ws(lines[i]), tab) - base for i in body]
    positive = sorted({d for d in deltas if d > 0})
    unit = positive[0] if positive else 0
    scale = unit in (2, 3, 4, 8) and unit != tab and all(d % unit == 0 for d in deltas)
    if scale and unit > tab:
        scale = unit % tab == 0 and len(positive) >= 2  # clear multi-level structure only
    elif scale:
        scale = tab % unit == 0
    out = lines[:1]
    for i in range(1, len(lines)):
        line = lines[i]
        if not line.strip():
            out.append(line)
            continue
        cols = _columns(_leading_ws(line), tab)
        if scale:
            cols = max(0, base + (cols - base) // unit * tab)
        out.append(_render_indent(cols, ctx) + line.lstrip(" \t"))
    return "\n".join(out)


# --------------------------------------------------------------------------- 9. whitespace


def trim_trailing_whitespace(text: str, ctx: PostContext) -> str:
    """Strip trailing whitespace per line and at the end.

    A single-line completion keeps its final space when an identifier follows
    the cursor directly ("foo(|bar" + "x, " stays "x, ").
    """
    lines = [line.rstrip() for line in text.split("\n")]
    trimmed = "\n".join(lines).rstrip()
    if trimmed.strip() and _before_code(ctx) and text.rstrip(" \t").endswith("\n"):
        # Lines of their own above the code right of the cursor: the line break
        # stays, and the code keeps the indentation it had.
        return trimmed + "\n" + ctx.line_prefix
    rest = ctx.line_suffix
    if "\n" not in trimmed and rest[:1].isidentifier() and text.rstrip("\n") != trimmed:
        return trimmed + text.rstrip("\n")[len(trimmed) :]
    return trimmed


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TYPED_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def _names(spaced: str) -> frozenset[str]:
    return frozenset(spaced.split())


# Names a file may use without ever writing them down.
_KNOWN_NAMES: dict[str, frozenset[str]] = {
    "python": frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)
    | frozenset(dir(builtins)),
    "javascript": _names(
        "await break case catch class const continue debugger default delete do else "
        "export extends finally for function if import in instanceof let new return super "
        "switch this throw try typeof var void while with yield async of static get set "
        "null undefined true false console document window require module exports process "
        "Promise Array Object String Number Boolean Error JSON Math Date Map Set RegExp "
        "Symbol parseInt parseFloat setTimeout clearTimeout setInterval"),
}
_KNOWN_NAMES["typescript"] = _KNOWN_NAMES["javascript"] | _names(
    "interface type enum implements private public protected readonly declare namespace "
    "abstract as keyof never unknown any string number boolean void")
_KNOWN_NAMES["javascriptreact"] = _KNOWN_NAMES["javascript"]
_KNOWN_NAMES["typescriptreact"] = _KNOWN_NAMES["typescript"]


def complete_known_word(text: str, ctx: PostContext) -> str:
    """Half-way through a name, finish it as the file spells it.

    A small model asked in the middle of a word often ends it its own way:
    "except EOFHe" + "r:" (the file has EOFHeaderError), "return [tari" +
    "] + ..." (tarinfo), "tarinfo = se" + " tarinfo" (self). Where the name the
    suggestion makes is nowhere in the document, nor a keyword or builtin,
    and the typed part begins a name that is there, the suggestion is that
    name's rest: the nearest one above the cursor, else below it, else the
    document's most frequent. A name the file does not have yet (the typed
    part begins none) is left to the model.
    """
    typed_match = _TYPED_IDENT.search(ctx.line_prefix)
    if typed_match is None or len(typed_match.group()) < 2:
        return text
    if ctx.line_suffix[:1].isalnum() or ctx.line_suffix[:1] == "_":
        return text  # inside a word: the rest of it is there already
    typed = typed_match.group()
    head = _IDENT.match(text)
    word = typed + (head.group() if head else "")
    if word in _KNOWN_NAMES.get(ctx.language, frozenset()):
        return text
    info = _prefix_info(ctx.prefix, ctx.language)
    if info.state.quote or info.state.comment:
        return text  # prose in a string or a comment is not made of the file's names
    before = _IDENT.findall(ctx.prefix[: len(ctx.prefix) - len(typed)])
    after = _IDENT.findall(ctx.suffix)
    if word in before or word in after:
        return text
    counts = dict(document_names(ctx.document)) if ctx.document else {}
    # The typed part at the cursor is one of the document's names itself.
    if counts.get(word, 0) - (1 if word == typed else 0) > 0:
        return text
    for name in [*reversed(before), *after, *counts]:
        if len(name) > len(typed) and name.startswith(typed):
            return name[len(typed):]
    return text


def drop_empty(text: str, ctx: PostContext) -> str:
    """Drop results with no meaningful character."""
    return text if text.strip() else ""


# --------------------------------------------------------------------------- pipeline

Filter = Callable[[str, PostContext], str | Suggestion]

PIPELINE: tuple[Filter, ...] = (
    cut_special_tokens,
    drop_prose,
    strip_prefix_echo,  # only with echo_prefix=True
    drop_line_echo,
    drop_doubled_space,
    fit_leading_newline,
    trim_single_line,
    cut_repetition,
    normalize_indentation,
    limit_scope,
    drop_suffix_copy,
    keep_header_for_body,
    trim_trailing_whitespace,
    complete_known_word,
    merge_suffix_overlap,
    fit_the_rest_of_the_line,
    drop_empty,
)


def run_filters(
    raw: str,
    ctx: PostContext,
    filters: Sequence[Filter] = PIPELINE,
    *,
    echo_prefix: bool = False,
) -> Suggestion | None:
    """Run ``filters`` in order; None when nothing useful remains."""
    text, replace = raw, 0
    for step in filters:
        if step is strip_prefix_echo and not echo_prefix:
            continue
        out = step(text, ctx)
        if isinstance(out, Suggestion):
            text, replace = out.text, out.replace_suffix_chars
        else:
            text = out
        if not text:
            return None
    if not text.strip() or text == ctx.line_suffix[:replace]:
        return None  # nothing, or a no-op retyping of what is already there
    return Suggestion(text, replace)


def postprocess(raw: str, ctx: PostContext, *, echo_prefix: bool = False) -> Suggestion | None:
    """Run the whole pipeline. ``echo_prefix`` for partial mode (the model may repeat the line)."""
    return run_filters(raw, ctx, PIPELINE, echo_prefix=echo_prefix)


# --------------------------------------------------------------------------- second try

_TOKENISH = re.compile(r"\w+|[^\w\s]+")
_WORD_PIECE = re.compile(r"_*(?:[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+)")
# Lines above the cursor compared with a copy of the next line (see below).
_SECOND_TRY_LINES = 40


def next_line_copy_word(raw: str, ctx: PostContext, *, anywhere: bool = False) -> str | None:
    """The word :func:`next_line_copy_split` points at, or None."""
    split = next_line_copy_split(raw, ctx, anywhere=anywhere)
    return None if split is None else split[2]


def next_line_copy_split(raw: str, ctx: PostContext, *,
                         anywhere: bool = False) -> tuple[str, int, str] | None:
    """At a blank line, when the model wrote the line that already follows:
    (that line as the model wrote it, the offset in it where it parts from the
    lines above, the first piece of the word there), for a second try that
    forbids it; else None. ``anywhere``: at any position (a completion asked
    for by hand), the copy of the code right of the cursor.

    A small model that sees the cursor at a blank line between two lines it
    can predict often skips the missing one and writes the one below (2 of 15
    places in bench/navigation.py); the copy is dropped and the user gets
    nothing where they are about to write. Forbidding the word where the copy
    parts from the lines above it ("self.crc" beside "self.name": "crc";
    "new signatureHelp_1" beside "new completion_1": "signatureHelp")
    leaves the model its second choice, usually the missing line.
    """
    if not anywhere and (ctx.line_prefix.strip() or ctx.line_suffix.strip()):
        return None
    written = next((line for line in raw.split("\n") if line.strip()), "")
    first = written.strip()
    after = next((line.strip() for line in ctx.suffix.split("\n") if line.strip()), "")
    if not first or first != after:
        return None
    above = [line.strip() for line in ctx.prefix.split("\n")[-_SECOND_TRY_LINES:]]
    shared = max((_common_len(first, line) for line in above if line), default=0)
    lead = len(written) - len(written.lstrip())
    for m in _TOKENISH.finditer(first):
        if m.end() > shared:
            # The first piece of the word ("signature" of "signatureHelp_1"):
            # forbidding all of it would forbid "_" and "1" in the answer too.
            # Punctuation is glued to the spaces around it in the model's
            # tokens (" :", "):"), so forbidding it does not take; no second try.
            piece = _WORD_PIECE.match(m.group())
            if piece is None:
                return None
            return written, lead + m.start(), piece.group()
    return None


def swaps_one_word(answer: str, copy: str) -> bool:
    """The answer's first line is ``copy``'s with one word changed and the rest kept.

    A second try (see :func:`next_line_copy_word`) that only swaps the word it
    was forbidden ("return EmptyHeaderError(...)" for the next line's "raise
    EmptyHeaderError(...)") is the next line bent out of shape, not the
    missing one: it is dropped like the copy was.
    """
    a = next((line.strip() for line in answer.split("\n") if line.strip()), "")
    b = next((line.strip() for line in copy.split("\n") if line.strip()), "")
    if not a or not b:
        return False
    head = _common_len(a, b)
    tail = _common_len(a[head:][::-1], b[head:][::-1])
    mid_a, mid_b = a[head:len(a) - tail], b[head:len(b) - tail]
    return bool(re.fullmatch(r"\w*", mid_a) and re.fullmatch(r"\w*", mid_b))


def _common_len(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


# --------------------------------------------------------------------------- streaming


def stream_should_stop(text_so_far: str, ctx: PostContext) -> bool:
    """True when more streamed output could not survive post-processing."""
    if any(token in text_so_far for token in QWEN_SPECIAL_TOKENS):
        return True
    text = text_so_far
    if ctx.language.lower() not in _MARKDOWN_LANGS:
        lead = _LEADING_FENCE.match(text)
        if lead:
            text = text[lead.end() :]
        elif text.lstrip().startswith("```"):
            return False  # a leading fence still arriving
        if _FENCE_LINE.search(text):
            return True
    if cut_repetition(text, ctx) != text:
        return True
    done = text[: text.rfind("\n") + 1]  # the lines that are complete
    if done and drop_prose(done, ctx) != done:
        return True
    # A sentence still arriving (its words so far, less the one being written):
    # a long one would otherwise stream to the token limit before it is seen.
    arriving = text[len(done):].rsplit(" ", 1)[0]
    if arriving.count(" ") + 1 >= _PROSE_MIN_WORDS and drop_prose(done + arriving, ctx) != (
            done + arriving):
        return True
    text = fit_leading_newline(text, ctx)
    if not ctx.multiline:
        if ctx.line_prefix.strip() and text.lstrip(" \t").startswith("\n") and not (
                _line_done(ctx)):
            return True  # first line is empty: nothing can survive
        # One line with something on it is kept (the first one, or the next one
        # after an empty first line): stop once it is complete.
        first, nl, rest = text.partition("\n")
        if nl and ctx.line_prefix.strip() and _line_done(ctx) and _invented_comment_line(
                first, ctx):
            text = rest  # the next line may take the invented comment's place
        head, nl, _ = text.lstrip(" \t\r\n").partition("\n")
        return bool(nl and head.strip())
    last_nl = text.rfind("\n")
    if last_nl > 0:
        complete = text[:last_nl]
        if _scope_cut(complete, ctx) is not None:
            return True
        if drop_suffix_copy(complete, ctx) != complete:
            return True
        if keep_header_for_body(complete + "\n", ctx) != complete + "\n":
            return True  # its first line is a header whose body is already below
    cut = _scope_cut(text, ctx)
    if cut is None:
        return False
    if cut.reason == "dedent":
        # The dedented line is still arriving: stop unless it may become "else" etc.
        partial = text[last_nl + 1 :].strip()
        return not any(word.startswith(partial) for word in _CONTINUATION_WORDS)
    return cut.reason == "closer"
