"""What the model sees: the text around the cursor, cut to a token budget.

Pure functions over a document's text and a cursor offset. Nothing here
touches the network or LSP types.

Three choices here decide latency and quality more than anything else:

* The prefix window's first line is anchored to a line chosen by its text
  (about one in half a step of ``ANCHOR_LINES`` lines, or less for small
  budgets: see :func:`anchor_step` and :func:`is_anchor_line`) instead of
  sliding with every keystroke, so consecutive prompts share
  their start byte for byte. llama.cpp then reuses its KV cache
  (25 s -> 0.2 s on this machine) and DashScope bills the repeated part at 20%.
* The lines of the cursor's block (from the nearest anchor line above the
  cursor, see :func:`is_anchor_line`; not inside a word) are laid out after
  ``<|fim_middle|>``, as the start of the answer, instead of at the end of
  the prefix. In Qwen's order (prefix, suffix,
  middle) the suffix then comes before everything typed in the block, so
  Enter and typing there only append to the prompt: the engine computes the
  new characters, not the whole suffix again.
* On a blank line the prompt ends the prefix at the end of the previous line
  and lets the model write ``"\\n" + line`` (about 9 points of exact match for
  Qwen2.5-Coder on a measured set); post-processing fits the newline and
  indentation back to the cursor.
"""

from __future__ import annotations

import math
import re
import zlib
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

ANCHOR_LINES = 32  # coarsest anchoring step (large budgets)
ASSUMED_LINE_CHARS = 40  # for choosing the step from a budget in characters
SUFFIX_SHARE = 0.12  # text after the cursor is recomputed on every keystroke (PSM order)
CROSS_FILE_SHARE = 0.3
MAX_SUFFIX_LINES = 24
# A line ending like this continues on the next one, at any indentation.
LINE_CONTINUES = ("\\", "=>", "->", "=", "+", "-", "*", "/", "%", "&&", "||", "?", ".", "|",
                  "&", "^", "<", ">", "(", "[", ",")
# Small windows still show the model the next lines (a share of a 96-token
# window would be none at all): what follows the cursor tells the model where
# its answer ends and what not to repeat. Taken from the prefix's share.
MIN_SUFFIX_CHARS = 200
# The code typed in the cursor's block goes after <|fim_middle|> (see
# build_context), so typing there only appends to the prompt; about one line in
# MIDDLE_LINES (and every blank line) starts a block.
MIDDLE_LINES = 8
# Characters per Qwen2.5 token, calibrated with the real tokenizer (the GGUF
# vocabulary loaded by llama_cpp with vocab_only=True) on the first 20 kB of 40
# random Python stdlib modules (546,150 chars -> 130,858 tokens: 4.17) and 40
# random JS files bundled with npm (96,836 -> 25,233: 3.84). We use the lower
# figure so that budgets err on the side of fewer real tokens. BENCHMARKS.md
# has the command to redo it. Windows are cut in characters with it; what a
# window costs is counted with estimate_tokens, which follows the tokenizer.
CHARS_PER_TOKEN = 3.8
# estimate_tokens splits text as Qwen2's pre-tokenizer does (each digit on its
# own, a word with the space or sign before it, runs of punctuation, runs of
# spaces); a word of more than LETTERS_PER_TOKEN letters counts one token per
# LETTERS_PER_TOKEN. Against the real tokenizer (`bench/quality.py --calibrate`:
# 153 windows of 0.8-2 kB from 40 stdlib modules and 40 npm files, 2026-12-07)
# it counts 1.12 times the real tokens at the median, 1.02-1.23 from the 5th to
# the 95th percentile: dense code (colorsys.py's arithmetic, 1.9 characters a
# token) no longer counts as half its tokens, as characters / CHARS_PER_TOKEN
# did (0.56-1.37, extremes 0.40-1.47).
LETTERS_PER_TOKEN = 7
PROMPT_OVERHEAD_TOKENS = 8  # FIM markers, path line and the like
KEY_BEFORE_CHARS = 1700  # the cache's key window plus what may be typed through
KEY_AFTER_CHARS = 400

_CLOSERS = set(")]}>\"'`;:,. \t")
_BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", " do", " then")
_WORD = re.compile(r"\w")


_PRE_TOKEN = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\w]?[^\W\d_]+|\d| ?[^\s\w]+|\s+(?!\S)|\s+")


# A run of letters longer than this is no word but data (base64 in a bundled
# WebAssembly module: 2.6 characters a token); letters outside ASCII (Cyrillic,
# CJK, box drawing) are a token or so each.
LONGEST_WORD = 24
DATA_CHARS_PER_TOKEN = 2.5


def _piece_tokens(piece: str) -> int:
    if not piece[-1].isalpha():
        return 1
    if not piece.isascii():
        return len(piece)
    if len(piece) > LONGEST_WORD:
        return math.ceil(len(piece) / DATA_CHARS_PER_TOKEN)
    return 1 + (len(piece) - 1) // LETTERS_PER_TOKEN


@lru_cache(maxsize=16384)
def _line_tokens(line: str) -> int:
    return sum(_piece_tokens(m.group()) for m in _PRE_TOKEN.finditer(line))


def estimate_tokens(text: str) -> int:
    """An estimate of the Qwen tokens in ``text`` (see LETTERS_PER_TOKEN).

    Counted per line (a line and its newline), so that the windows of one file,
    which share most of their lines, cost a dictionary look-up a line.
    """
    if not text:
        return 0
    lines = text.split("\n")
    return sum(map(_line_tokens, lines)) + len(lines) - 1


@dataclass(frozen=True, slots=True)
class Snippet:
    """A piece of another workspace file offered as cross-file context."""

    path: str
    text: str


@dataclass(frozen=True, slots=True)
class CompletionContext:
    uri: str
    path: str  # relative path shown to the model
    language: str
    version: int
    offset: int  # cursor, in code points
    prefix: str  # true text before the cursor (window)
    suffix: str  # true text after the cursor (window)
    fim_prefix: str  # prefix as laid out in the prompt
    fim_suffix: str  # suffix as laid out in the prompt
    multiline: bool
    indent_unit: str
    snippets: tuple[Snippet, ...] = ()
    repo_name: str = ""
    manual: bool = False
    prefix_start_line: int = 0
    # The document's text right around the cursor, whatever the window: what
    # suggestions are cached under, so windows of different sizes share them.
    before: str = ""
    after: str = ""
    # The end of the prefix, laid out after <|fim_middle|> as the start of the
    # answer (the prompt's prefix is then ``fim_prefix`` without it).
    fim_middle: str = ""
    # Text the prompt's middle ends with that belongs to the answer (the newline
    # before a blank cursor line): the model's text is read as if it began with it.
    answer_lead: str = ""
    # The whole text (a reference, not a copy): its names are what a half-typed
    # name is checked against, counted only when a suggestion needs them.
    document: str = field(default="", compare=False, repr=False)

    @property
    def line_prefix(self) -> str:
        return self.prefix[self.prefix.rfind("\n") + 1 :]

    @property
    def line_suffix(self) -> str:
        nl = self.suffix.find("\n")
        line = self.suffix if nl < 0 else self.suffix[:nl]
        return line.rstrip("\r")

    @property
    def blank_line(self) -> bool:
        return not self.line_prefix.strip() and not self.line_suffix.strip()


def ends_finished_line(line_prefix: str, line_suffix: str) -> bool:
    """The cursor ends a line of code after which the next line is what comes
    (the next line may be offered there): a statement that is complete, or an
    item of a list or argument list that ends with its comma. Not a line that
    goes on where it is (``x = ``, ``a +``, ``foo(``)."""
    code = line_prefix.rstrip()
    if not code or line_suffix.strip():
        return False
    return code.endswith(",") or not code.endswith(LINE_CONTINUES)


def after_enter(text: str, offset: int, unit: str) -> tuple[str, int] | None:
    """The text and cursor after Enter at ``offset``, when it ends a finished line.

    The new line gets the indentation an editor gives it: the line's own, one
    unit deeper after a block opener (``:``, ``{``). None elsewhere (mid-line,
    a blank line, a line that goes on).
    """
    line_start = text.rfind("\n", 0, offset) + 1
    nl = text.find("\n", offset)
    line_end = len(text) if nl < 0 else nl
    line_prefix, line_suffix = text[line_start:offset], text[offset:line_end].rstrip("\r")
    if not ends_finished_line(line_prefix, line_suffix):
        return None
    indent = line_prefix[: len(line_prefix) - len(line_prefix.lstrip(" \t"))]
    if line_prefix.rstrip().endswith((":", "{")):
        indent += unit
    eol = "\r\n" if nl > 0 and text[nl - 1] == "\r" else "\n"
    return text[:offset] + eol + indent + text[offset:], offset + len(eol) + len(indent)


def detect_indent_unit(text: str) -> str:
    """The document's indentation unit: a tab, or the most common space step."""
    tabs = spaces = 0
    steps: dict[int, int] = {}
    prev = 0
    for line in text.splitlines()[:2000]:
        if not line.strip():
            continue
        stripped = line.lstrip(" \t")
        lead = line[: len(line) - len(stripped)]
        if lead.startswith("\t"):
            tabs += 1
            continue
        width = len(lead)
        if width:
            spaces += 1
        delta = width - prev
        if delta > 0:
            steps[delta] = steps.get(delta, 0) + 1
        prev = width
    if tabs > spaces:
        return "\t"
    if not steps:
        return "    "
    best = max(steps.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    return " " * best if best in (2, 3, 4, 8) else "    "


_HASH_COMMENT = frozenset({
    "python", "shellscript", "sh", "bash", "zsh", "fish", "ruby", "perl", "yaml", "toml", "r",
    "make", "makefile", "dockerfile", "elixir", "nim", "powershell", "julia", "coffeescript",
})  # fmt: skip
_DASH_COMMENT = frozenset({"lua", "sql", "haskell", "ada", "elm"})
_NO_SLASH_COMMENT = _HASH_COMMENT | _DASH_COMMENT | frozenset({"html", "xml", "markdown", "css"})
_BACKTICK_STRINGS = frozenset({
    "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "shellscript",
    "sh", "bash", "zsh",
})  # fmt: skip


def _in_comment_or_string(line_prefix: str, language: str) -> bool:
    """Rough lexer over the current line: is the cursor in a comment or string?

    It only sees one line, so a cursor inside a multi-line string or block
    comment that started earlier is not detected (the safe direction: such a
    cursor is then usually mid-line or on a blank line).
    """
    lang = language.lower()
    slash = lang not in _NO_SLASH_COMMENT  # "//" is floor division in Python
    quotes = "\"'`" if lang in _BACKTICK_STRINGS else "\"'"
    quote: str | None = None
    i = 0
    n = len(line_prefix)
    while i < n:
        ch = line_prefix[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if line_prefix.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
        elif ch in quotes:
            if lang == "rust" and ch == "'" and not re.match(r"'(\\.|[^\\'])'", line_prefix[i:]):
                i += 1  # a lifetime ('a), not a char literal
                continue
            triple = line_prefix[i : i + 3]
            quote = triple if lang == "python" and triple in ('"""', "'''") else ch
            i += len(quote)
            continue
        elif (ch == "#" and lang in _HASH_COMMENT) or (
            slash and (line_prefix.startswith("//", i) or line_prefix.startswith("/*", i))
        ) or (lang in _DASH_COMMENT and line_prefix.startswith("--", i)):
            if line_prefix.startswith("/*", i):
                end = line_prefix.find("*/", i + 2)
                if end >= 0:
                    i = end + 2
                    continue
            return True
        i += 1
    return quote is not None


def _opens_block(code: str, language: str) -> bool:
    stripped = code.rstrip()
    if language.lower() == "python" and stripped.endswith(","):
        return False
    return stripped.endswith(_BLOCK_OPENERS)


def decide_multiline(
    line_prefix: str,
    line_suffix: str,
    language: str,
    setting: str,
    *,
    previous_line: str = "",
) -> bool:
    """Single or multi-line completion at this cursor.

    Multi-line right after a block opener (``def f():|``, ``{|``) and on an
    empty line inside a block (the line is indented, or the previous code line
    opens a block or is itself indented). Single-line mid-line, inside
    comments and strings, and on an empty top-level line. ``setting``
    ("always"/"never") overrides all of this.
    """
    if setting == "always":
        return True
    if setting == "never":
        return False
    if line_suffix.strip(" \t)]}\"';,"):
        return False  # mid-line: finish this line only
    if _in_comment_or_string(line_prefix, language):
        return False
    if not line_prefix.strip():
        if line_prefix:  # indented empty line: inside a block
            return True
        prev = previous_line.rstrip()
        if not prev:
            return False
        if _in_comment_or_string(prev, language) and not prev.strip().startswith(("#", "//")):
            return False
        return _opens_block(prev, language) or prev[:1] in " \t"
    return _opens_block(line_prefix, language)


MAX_REST_CHARS = 3  # meaningful characters right of the cursor that still allow a request


def skip_reason(ctx: CompletionContext, *, untitled: bool) -> str | None:
    """Why an automatic request would not help, or None to go ahead.

    Manual triggers always ask. Automatic ones skip an empty untitled buffer,
    a cursor inside a word (``fo|o``), and a cursor followed by more than
    MAX_REST_CHARS characters that are not closing brackets, quotes,
    punctuation or spaces.
    """
    if ctx.manual:
        return None
    if untitled and not (ctx.prefix.strip() or ctx.suffix.strip()):
        return "empty untitled buffer"
    rest = ctx.line_suffix
    if rest and _WORD.match(rest[0]) and ctx.line_prefix and _WORD.match(ctx.line_prefix[-1]):
        return "cursor inside a word"
    meaningful = [c for c in rest if c not in _CLOSERS]
    if len(meaningful) > MAX_REST_CHARS:
        return "text right of the cursor"
    return None


_TRIPLE_QUOTE = re.compile(r'"""|\'\'\'')
_TRIPLE_QUOTE_LANGS = frozenset({"python", "kotlin", "scala", "swift"})


@lru_cache(maxsize=4)
def _triple_quotes(text: str) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
    """Ends of the triple quotes in ``text``, and the string open after each.

    Cached: a request builds several windows over the same text (and a str
    keeps its hash), so the file is scanned once per version.
    """
    ends: list[int] = []
    states: list[str | None] = []
    open_quote: str | None = None
    for m in _TRIPLE_QUOTE.finditer(text):
        if open_quote is None:
            open_quote = m.group()
        elif m.group() == open_quote:
            open_quote = None
        ends.append(m.end())
        states.append(open_quote)
    return tuple(ends), tuple(states)


def _open_triple_quote(text: str, pos: int) -> str | None:
    """The triple quote whose string ``pos`` lies in, or None (quotes in
    comments or ordinary strings are not told apart: rare, and only a window
    start depends on it)."""
    ends, states = _triple_quotes(text)
    i = bisect_right(ends, pos) - 1
    return states[i] if i >= 0 else None


def _after_string(text: str, start: int, line_start: int, language: str) -> int:
    """``start``, or the line after the end of the triple-quoted string it lies
    in when that ends above the cursor line: a window that opens inside a
    docstring shows the model, and the post-processing's reading of the code,
    the string's end as the start of one."""
    if start == 0 or language.lower() not in _TRIPLE_QUOTE_LANGS:
        return start
    quote = _open_triple_quote(text, start)
    if quote is None:
        return start
    close = text.find(quote, start)
    after = text.find("\n", close) + 1 if close >= 0 else 0
    return after if 0 < after <= line_start else start


def _prefix_window(text: str, line_start: int, budget_chars: int) -> tuple[int, int]:
    """Walk back whole lines from ``line_start`` while they fit ``budget_chars``.

    Returns (offset of the first line, lines walked back).
    """
    pos = line_start
    walked = 0
    used = 0
    while pos > 0:
        prev = text.rfind("\n", 0, pos - 1) + 1
        seg = pos - prev
        if used + seg > budget_chars:
            break
        used += seg
        pos = prev
        walked += 1
    return pos, walked


def anchor_step(prefix_chars: int) -> int:
    """Lines between possible window starts: ANCHOR_LINES for large budgets, less for small.

    Anchoring gives up to ``step - 1`` lines of the window, so a small budget
    (512 tokens is about 40 lines) uses a finer step. The step depends on the
    budget only, never on the text, so it is the same on every keystroke.
    """
    lines = prefix_chars // (4 * ASSUMED_LINE_CHARS)
    step = 4
    while step * 2 <= min(lines, ANCHOR_LINES):
        step *= 2
    return step


def _line_at(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start : len(text) if end < 0 else end].rstrip("\r")


def is_anchor_line(line: str, step: int, *, blank: bool) -> bool:
    """A line where a window or block may start, decided by its text alone.

    About one non-blank line in ``step`` qualifies (by a checksum of its
    text), and with ``blank`` every blank line does. Because it depends on
    nothing but the line, an edit elsewhere in the file (a line added 500
    lines above) leaves the windows around other places where they were,
    which a rule by line number would not: their prompts stay byte for byte
    what the engine computed.
    """
    stripped = line.strip()
    if not stripped:
        return blank
    return zlib.crc32(stripped.encode("utf-8", "surrogatepass")) % step == 0


def _anchor(text: str, start: int, line_start: int, step: int) -> tuple[int, int]:
    """Move ``start`` forward to the next anchor line (see :func:`is_anchor_line`).

    Anchor lines here are one non-blank line in ``step // 2``, so that on
    average as many lines of the budget go unused as with a fixed step of
    ``step`` lines; blank lines do not count, or the start would move every
    few lines typed. The window then starts at the same line for every cursor
    position below it until that line falls out of the budget, so consecutive
    prompts share their start byte for byte. When no anchor line comes within
    ``2 * step`` lines, the line whose index is a multiple of ``step`` is taken.
    Returns (offset, line index).
    """
    if start == 0:
        return 0, 0
    index = text.count("\n", 0, start)
    pos, i = start, index
    while pos < line_start and i - index < 2 * step:
        if is_anchor_line(_line_at(text, pos), max(2, step // 2), blank=False):
            return pos, i
        pos = text.find("\n", pos) + 1
        i += 1
    anchored = math.ceil(index / step) * step
    while index < anchored and start < line_start:
        start = text.find("\n", start) + 1
        index += 1
    return start, index


def _suffix_end(text: str, offset: int, line_end: int, budget_chars: int) -> int:
    """End of the suffix window: whole lines after the cursor line, within budget."""
    end = min(line_end, offset + budget_chars)  # a huge rest of line is cut
    lines = 0
    while end == line_end and end < len(text) and lines < MAX_SUFFIX_LINES:
        nxt = text.find("\n", end + 1)
        nxt = len(text) if nxt < 0 else nxt
        if nxt - offset > budget_chars:
            break
        end = nxt
        line_end = nxt
        lines += 1
    return end


def _previous_line(text: str, line_start: int) -> str:
    """The nearest non-blank line above the cursor line (at most 50 lines up)."""
    pos = line_start
    for _ in range(50):
        if pos <= 0:
            return ""
        prev = text.rfind("\n", 0, pos - 1) + 1
        line = text[prev : pos - 1].rstrip("\r")
        if line.strip():
            return line
        pos = prev
    return ""


_INDENT_CACHE: dict[tuple[str, int, int], str] = {}


def _indent_unit_cached(uri: str, version: int, text: str, window: str) -> str:
    """detect_indent_unit over the window, cached per document version."""
    key = (uri, version, len(text))
    unit = _INDENT_CACHE.get(key)
    if unit is None:
        unit = detect_indent_unit(window)
        if len(_INDENT_CACHE) > 256:
            _INDENT_CACHE.clear()
        _INDENT_CACHE[key] = unit
    return unit


def prompt_budget(
    context_tokens: int, *, max_output_tokens: int = 0, context_window: int | None = None
) -> int:
    """Tokens the prompt may use: ``context_tokens``, less what the model window needs.

    With a known model window (the local engine's n_ctx) the prompt plus the
    output must fit in it; a few tokens are kept for the FIM markers.
    """
    budget = context_tokens - PROMPT_OVERHEAD_TOKENS
    if context_window is not None:
        budget = min(budget, context_window - max_output_tokens - PROMPT_OVERHEAD_TOKENS)
    return max(0, budget)


def build_context(
    text: str,
    offset: int,
    *,
    uri: str,
    path: str,
    language: str,
    version: int,
    context_tokens: int,
    multiline_setting: str = "auto",
    snippets: Sequence[Snippet] = (),
    repo_name: str = "",
    manual: bool = False,
    indent_unit: str | None = None,
    max_output_tokens: int = 0,
    context_window: int | None = None,
    blank_line_layout: bool = True,
    window_start: int | None = None,
) -> CompletionContext:
    """Cut the document around ``offset`` into a budgeted, anchored context.

    The budget (see :func:`prompt_budget`) is split: CROSS_FILE_SHARE for
    other files when there are any, then of the rest SUFFIX_SHARE for the
    text after the cursor and the remainder for the text before it. Both
    windows end at line boundaries, except that a single line longer than its
    whole share is cut inside the line. ``blank_line_layout=False`` keeps the
    literal split at the cursor on blank lines (for measurements).
    ``window_start``: a line start at or above the cursor's line where the
    window begins instead (a start the engine has computed before; the
    caller bounds how far above the budget it lies).
    """
    offset = max(0, min(offset, len(text)))
    line_start = text.rfind("\n", 0, offset) + 1
    nl = text.find("\n", offset)
    line_end = len(text) if nl < 0 else nl

    total = prompt_budget(
        context_tokens, max_output_tokens=max_output_tokens, context_window=context_window
    )
    cross_budget = int(total * CROSS_FILE_SHARE) if snippets else 0
    own = total - cross_budget
    own_chars = int(own * CHARS_PER_TOKEN)
    suffix_chars = max(int(own_chars * SUFFIX_SHARE), min(MIN_SUFFIX_CHARS, own_chars // 3))
    prefix_chars = own_chars - suffix_chars

    cur_line_len = offset - line_start
    if (window_start is not None and 0 <= window_start <= line_start
            and (window_start == 0 or text[window_start - 1] == "\n")):
        start, start_line_idx = window_start, text.count("\n", 0, window_start)
    elif cur_line_len >= prefix_chars:
        # One enormous line (minified code): no line boundary is in reach.
        start, start_line_idx = offset - prefix_chars, text.count("\n", 0, line_start)
    else:
        fitted, _walked = _prefix_window(text, line_start, prefix_chars - cur_line_len)
        start, start_line_idx = _anchor(text, fitted, line_start, anchor_step(prefix_chars))
        if offset - start < (offset - fitted) // 2:
            # A window of a few long lines: anchoring would leave the model
            # (almost) nothing before the cursor. The window's own start then.
            start, start_line_idx = fitted, text.count("\n", 0, fitted)
        moved = _after_string(text, start, line_start, language)
        if moved != start:
            start, start_line_idx = moved, text.count("\n", 0, moved)
    prefix = text[start:offset]
    suffix = text[offset : _suffix_end(text, offset, line_end, suffix_chars)]

    line_prefix = text[line_start:offset]
    line_suffix = text[offset:line_end].rstrip("\r")
    multiline = decide_multiline(
        line_prefix, line_suffix, language, multiline_setting,
        previous_line=_previous_line(text, line_start),
    )

    fim_prefix, fim_suffix = prefix, suffix
    blank = not line_prefix.strip() and not line_suffix.strip()
    if blank_line_layout and blank and line_start > start:
        # Blank line: end the prompt's prefix at the end of the previous line
        # and let the model write "\n" + the line (measured: +9 points of
        # exact match); post-processing fits newline and indentation back.
        cut = len(prefix) - len(line_prefix) - 1
        if cut > 0 and prefix[cut - 1] == "\r":
            cut -= 1
        fim_prefix = prefix[:cut]
        fim_suffix = suffix[len(line_suffix) :] if suffix.strip() else ""
        fim_suffix = fim_suffix.removeprefix("\r")

    fim_prefix, fim_middle = _split_middle(text, fim_prefix, start, line_start)
    if fim_middle and _WORD.match(line_prefix[-1:]):
        # Inside a word ("default=defa|") the model continues a middle with
        # the tokens it would have written, and "defa" is not how it spells
        # the start of "default": it went on with "," (seen in Neovim). A
        # prefix that ends inside a word is what FIM training cuts, so the
        # block goes back into the prefix for this keystroke.
        fim_prefix, fim_middle = fim_prefix + fim_middle, ""
    answer_lead = ""
    if fim_middle and len(fim_prefix) + len(fim_middle) < len(prefix) - len(line_prefix):
        # A blank line inside the block: the middle keeps the newline that ends
        # the line above, and the model writes the line itself. (Left without
        # it, the model tends to go on with the line above; measured.) The
        # answer is then read as if the model had written the newline.
        answer_lead = prefix[len(fim_prefix) + len(fim_middle) : len(prefix) - len(line_prefix)]
        fim_middle += answer_lead

    window = prefix[-20000:] + suffix[:4000]
    unit = indent_unit or _indent_unit_cached(uri, version, text, window)
    return CompletionContext(
        uri=uri,
        path=path,
        language=language,
        version=version,
        offset=offset,
        prefix=prefix,
        suffix=suffix,
        fim_prefix=fim_prefix,
        fim_suffix=fim_suffix,
        multiline=multiline,
        indent_unit=unit,
        snippets=tuple(fit_snippets(snippets, cross_budget, prefix + suffix)),
        repo_name=repo_name,
        manual=manual,
        prefix_start_line=start_line_idx,
        before=text[max(0, offset - KEY_BEFORE_CHARS) : offset],
        after=text[offset : offset + KEY_AFTER_CHARS],
        fim_middle=fim_middle,
        answer_lead=answer_lead,
        document=text,
    )


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@lru_cache(maxsize=8)
def document_names(text: str) -> tuple[tuple[str, int], ...]:
    """The names written in ``text`` with their counts, most frequent first
    (cached: the early answers and the final one of a request share a text)."""
    return tuple(Counter(_NAME.findall(text)).most_common())


def _split_middle(text: str, fim_prefix: str, start: int, line_start: int) -> tuple[str, str]:
    """Split the prompt's prefix at the first line of the cursor's block.

    The block starts at the nearest anchor line above the cursor's line (see
    :func:`is_anchor_line`: every blank line and one other line in
    ``MIDDLE_LINES``; at most ``2 * MIDDLE_LINES`` lines up, else at a line
    number that is a multiple of it), so the split stays put while the user
    types or presses Enter below it, and edits elsewhere in the file do not
    move it. Returns (prefix, middle); the middle is empty when the block
    starts at or before the window (small windows), or when the prefix ends
    before it.
    """
    anchor = -1
    pos = line_start
    for _ in range(2 * MIDDLE_LINES):
        if pos <= start:
            break
        pos = text.rfind("\n", 0, pos - 1) + 1
        if is_anchor_line(_line_at(text, pos), MIDDLE_LINES, blank=True):
            anchor = pos
            break
    if anchor < 0:
        index = text.count("\n", 0, line_start)
        anchor = line_start
        for _ in range(index % MIDDLE_LINES):
            anchor = text.rfind("\n", 0, anchor - 1) + 1
    cut = anchor - start
    if cut <= 0 or cut >= len(fim_prefix):
        return fim_prefix, ""
    return fim_prefix[:cut], fim_prefix[cut:]


def snippet_tokens(snip: Snippet) -> int:
    """Estimated tokens of one rendered snippet: ``<|file_sep|>path\\ncontent``."""
    return estimate_tokens(snip.text) + estimate_tokens(snip.path) + 2


def fit_snippets(snippets: Sequence[Snippet], budget_tokens: int, window: str) -> list[Snippet]:
    """Keep the snippets that fit the budget, taken in priority (given) order.

    A snippet whose text already appears inside the current window is
    dropped; one that does not fit whole is cut at a line boundary when a
    useful part (>= 200 chars) fits. The kept snippets are returned in path
    order (stable sort), so the prompt does not depend on the scores.
    """
    kept: list[Snippet] = []
    used = 0
    for snip in snippets:
        body = snip.text.strip()
        if not body or body in window:
            continue
        if used + snippet_tokens(snip) > budget_tokens:
            room = (budget_tokens - used - estimate_tokens(snip.path) - 2) * CHARS_PER_TOKEN
            if room < 200:
                continue
            cut = snip.text.rfind("\n", 0, int(room))
            if cut <= 0:
                continue
            snip = Snippet(snip.path, snip.text[: cut + 1])
        kept.append(snip)
        used += snippet_tokens(snip)
    return sorted(kept, key=lambda sn: sn.path)
