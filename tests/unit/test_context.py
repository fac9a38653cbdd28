"""The context builder: budget, line-boundary cuts, anchoring, gating, single vs multi-line."""

from __future__ import annotations

import itertools
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from qwen_lsp.context import (
    CHARS_PER_TOKEN,
    MIDDLE_LINES,
    CompletionContext,
    Snippet,
    anchor_step,
    build_context,
    decide_multiline,
    estimate_tokens,
    fit_snippets,
    is_anchor_line,
    prompt_budget,
    skip_reason,
)
from qwen_lsp.prompts import fim_prompt

STDLIB = Path(sysconfig.get_paths()["stdlib"])
REAL = (STDLIB / "argparse.py").read_text(encoding="utf-8")


def ctx_at(text: str, offset: int, **kw: Any) -> CompletionContext:
    args: dict[str, Any] = {"uri": "file:///w/a.py", "path": "a.py", "language": "python",
                            "version": 1, "context_tokens": 512}
    args.update(kw)
    return build_context(text, offset, **args)


# --------------------------------------------------------------------------- budget


@pytest.mark.parametrize("tokens", [256, 512, 1024, 1536])
@pytest.mark.parametrize("frac", [0.1, 0.5, 0.93])
def test_prompt_fits_budget_and_cuts_at_line_boundaries(tokens: int, frac: float) -> None:
    offset = int(len(REAL) * frac)
    ctx = ctx_at(REAL, offset, context_tokens=tokens)
    # Windows are cut in characters (what they cost is counted by the view).
    assert len(ctx.prefix) + len(ctx.suffix) <= tokens * CHARS_PER_TOKEN
    start = offset - len(ctx.prefix)
    end = offset + len(ctx.suffix)
    assert REAL[start:offset] == ctx.prefix and REAL[offset:end] == ctx.suffix
    assert start == 0 or REAL[start - 1] == "\n"  # the prefix starts a line
    assert end == len(REAL) or REAL[end] == "\n"  # the suffix ends a line
    # Prefix-heavy: the text before the cursor gets most of the budget.
    assert len(ctx.prefix) > 2 * len(ctx.suffix)
    # And the budget is used, not wasted (anchoring gives up < ANCHOR_LINES lines).
    assert len(ctx.prefix) + len(ctx.suffix) > tokens * CHARS_PER_TOKEN * 0.3


@pytest.mark.parametrize("tokens", [96, 128, 192])
def test_a_small_window_still_shows_the_next_lines(tokens: int) -> None:
    body = "".join(f"    value_{i} = compute_something(value_{i - 1}, factor={i})\n"
                   for i in range(1, 40))
    text = "def f(value_0):\n" + body[:len(body) // 2] + "    \n" + body[len(body) // 2:]
    cursor = text.index("    \n") + 4
    ctx = ctx_at(text, cursor, context_tokens=tokens)
    nxt = text[cursor:].split("\n")[1]
    assert ctx.suffix.startswith("\n" + nxt + "\n")  # the whole next line
    assert len(ctx.prefix) + len(ctx.suffix) <= tokens * CHARS_PER_TOKEN
    assert len(ctx.prefix) > len(ctx.suffix)


@pytest.mark.parametrize("line", range(20, 28))
def test_anchoring_never_takes_most_of_a_small_window(line: int) -> None:
    rows = [f"        this.registerFeature(new feature_{i}.SomeLongFeatureName(this, {i}));"
            for i in range(40)]
    text = "\n".join(rows[:line] + ["        "] + rows[line:])
    cursor = sum(len(r) + 1 for r in rows[:line]) + 8
    ctx = ctx_at(text, cursor, context_tokens=96)
    # Room for two of these lines: at least one of them stays, not the cursor line only.
    assert ctx.prefix.count("\n") >= 1
    assert estimate_tokens(ctx.prefix) + estimate_tokens(ctx.suffix) <= 96


@pytest.mark.parametrize("tokens", [96, 128, 192, 256])
def test_a_window_does_not_open_inside_a_docstring(tokens: int) -> None:
    doc = "".join(f"    Line {i} of a long docstring that explains the class.\n" for i in range(30))
    text = (f'class Thing:\n    """Summary.\n\n{doc}    """\n\n'
            "    def __init__(self, name):\n        self.name = name\n\n"
            "    def rename(self, new):\n        old = self.name\n        \n")
    cursor = text.rindex("        \n") + 8
    ctx = ctx_at(text, cursor, context_tokens=tokens)
    assert ctx.prefix.count('"""') % 2 == 0  # whole strings only: none opens at the start
    assert "def rename(self, new):" in ctx.prefix
    from qwen_lsp.engine import post_context
    from qwen_lsp.postprocess import postprocess
    raw = "self.name = new\n        return old\n\n    def other(self):\n        pass\n"
    assert postprocess(raw, post_context(ctx)).text == "self.name = new\n        return old"


@pytest.mark.parametrize("tokens", [300, 600, 1200])
def test_prompt_with_snippets_fits_budget(tokens: int) -> None:
    snippets = [Snippet(f"pkg/m{i}.py", REAL[i * 3000 : i * 3000 + 2500]) for i in range(1, 6)]
    offset = len(REAL) // 2
    ctx = ctx_at(REAL, offset, context_tokens=tokens, snippets=snippets)
    assert ctx.snippets, "some cross-file context fits"
    assert estimate_tokens(fim_prompt(ctx)) <= tokens + 4 * len(ctx.snippets) + 8
    for snip in ctx.snippets:
        assert snip.text.endswith("\n")  # cut at a line boundary


def test_model_window_leaves_room_for_output() -> None:
    assert prompt_budget(1536) == 1536 - 8
    assert prompt_budget(4096, max_output_tokens=128, context_window=2048) == 2048 - 128 - 8
    ctx = ctx_at(REAL, len(REAL) // 2, context_tokens=4000, max_output_tokens=256,
                 context_window=1024)
    assert estimate_tokens(ctx.prefix + ctx.suffix) <= 1024 - 256


def test_enormous_line_is_cut_inside_the_line() -> None:
    line = "x = [" + ", ".join(str(i) for i in range(20000)) + "]\n"
    text = "import os\n" + line
    offset = len(text) - 50
    ctx = ctx_at(text, offset, context_tokens=256)
    assert len(ctx.prefix + ctx.suffix) <= 256 * CHARS_PER_TOKEN
    assert ctx.prefix == text[offset - len(ctx.prefix) : offset]


def test_prefix_start_is_anchored_while_typing() -> None:
    lines = [f"value_{i} = compute({i})" for i in range(400)]
    text = "\n".join(lines) + "\n"
    starts = set()
    line_no = 300
    base = sum(len(x) + 1 for x in lines[:line_no])
    typed = "result = "
    for k in range(len(typed) + 1):
        doc = text[:base] + typed[:k] + text[base:]
        ctx = ctx_at(doc, base + k, context_tokens=512)
        starts.add(base + k - len(ctx.prefix))
        step = anchor_step(int(504 * 0.8 * CHARS_PER_TOKEN))
        first_line = ctx.prefix.split("\n", 1)[0]
        assert (is_anchor_line(first_line, step // 2, blank=False)
                or ctx.prefix_start_line % step == 0)
    assert len(starts) == 1  # byte-identical prompt start on every keystroke


@pytest.mark.parametrize("frac", [0.3, 0.6, 0.9])
def test_an_edit_far_above_leaves_the_prompt_of_a_place_unchanged(frac: float) -> None:
    # Window starts and blocks are chosen by the lines' text, not their numbers:
    # a line added 1,000 lines above must not make the engine recompute a place.
    offset = REAL.index("\n", int(len(REAL) * frac))
    before = fim_prompt(ctx_at(REAL, offset, context_tokens=1536))
    edited = "import this_module_was_added\n" + REAL
    after = fim_prompt(ctx_at(edited, offset + len(edited) - len(REAL), context_tokens=1536))
    assert after == before


def test_fit_snippets_drops_copies_of_the_window_and_renders_in_path_order() -> None:
    window = "def a():\n    return 1\n"
    snips = [Snippet("x.py", "def a():\n    return 1\n"), Snippet("b.py", "B = 2\n"),
             Snippet("a.py", "A = 1\n")]
    kept = fit_snippets(snips, 100, window)
    assert [s.path for s in kept] == ["a.py", "b.py"]
    assert fit_snippets(snips, 0, window) == []
    # Priority is the given order: with room for one, the first one wins.
    big = [Snippet("z.py", "Z = 1\n" * 60), Snippet("a.py", "A = 1\n" * 60)]
    one = fit_snippets(big, estimate_tokens("Z = 1\n" * 60) + 10, window)
    assert [s.path for s in one] == ["z.py"]


# --------------------------------------------------------------------------- layout


def test_blank_line_layout_moves_the_newline_into_the_completion() -> None:
    text = "def f(x):\n    y = x\n    \n    return y\n"
    offset = text.index("    \n") + 4
    ctx = ctx_at(text, offset)
    assert ctx.fim_prefix == "def f(x):\n    y = x"
    assert ctx.fim_suffix == "\n    return y\n"
    literal = ctx_at(text, offset, blank_line_layout=False)
    assert literal.fim_prefix == text[:offset] and literal.fim_suffix == text[offset:]


def test_block_lines_go_after_fim_middle_and_nothing_is_lost() -> None:
    # Inside a real function of argparse.py, on every line of one block.
    start = REAL.index("    def _get_values(self, action, arg_strings):")
    first = REAL.count("\n", 0, start)
    checked = 0
    for line_no in range(first + 2, first + 2 + 2 * MIDDLE_LINES):
        line_start = sum(len(x) + 1 for x in REAL.split("\n")[:line_no])
        offset = line_start + len(REAL[line_start:].split("\n")[0])  # end of the line
        ctx = ctx_at(REAL, offset, context_tokens=1536)
        if ctx.blank_line:
            continue  # the blank-line layout: tested below
        if ctx.line_prefix[-1:].isalnum() or ctx.line_prefix.endswith("_"):
            assert ctx.fim_middle == ""  # inside a word: tested below
            continue
        checked += 1
        # The prompt's prefix and middle are the prefix, cut where the block starts.
        assert ctx.fim_prefix + ctx.fim_middle == ctx.prefix
        all_lines = REAL.split("\n")
        block_first = next((k for k in range(line_no - 1, line_no - 1 - 2 * MIDDLE_LINES, -1)
                            if is_anchor_line(all_lines[k], MIDDLE_LINES, blank=True)),
                           line_no - line_no % MIDDLE_LINES)
        assert ctx.fim_middle.count("\n") == line_no - block_first
        assert ctx.fim_prefix.endswith("\n")
        assert fim_prompt(ctx).endswith("<|fim_middle|>" + ctx.fim_middle)
    assert checked >= 4


def test_typing_and_enter_inside_a_block_only_append_to_the_prompt() -> None:
    # Write a new function line by line in the middle of argparse.py, the way
    # a user types it (Enter at the end of a line, then the next line's keys).
    at = REAL.index("\n", REAL.index("    def _get_values(self, action, arg_strings):"))
    at = REAL.index("\n", at + 1) + 1  # a line start inside the function
    typed = "        if not arg_strings:\n            return None\n        count = len(arg_strings)\n"
    prompts: list[tuple[str, str]] = []  # (the prompt's prefix part, the whole prompt)
    for k in range(len(typed) + 1):
        doc = REAL[:at] + typed[:k] + "\n" + REAL[at:]
        ctx = ctx_at(doc, at + k, context_tokens=1536)
        prompts.append((ctx.fim_prefix, fim_prompt(ctx)))
    same_block = [(a, b) for (pa, a), (pb, b) in itertools.pairwise(prompts) if pa == pb]
    # Keystrokes that are not inside a word (Enter, spaces, punctuation, the
    # indentation) keep the prompt's prefix (the block moves at anchor lines
    # only), and every one of those extends the previous prompt, a trailing
    # indentation aside (the blank-line layout drops it).
    outside_words = sum(1 for k in range(1, len(typed) + 1)
                        if not (typed[k - 1].isalnum() or typed[k - 1] == "_"))
    assert len(same_block) > 0.5 * outside_words
    assert all(b.startswith(a.rstrip(" ")) for a, b in same_block)
    assert all(p.count("<|fim_middle|>") == 1 for _, p in prompts)


@pytest.mark.parametrize("nl", ["\n", "\r\n"])
def test_blank_line_inside_a_block_keeps_the_newline_in_the_middle(nl: str) -> None:
    lines = [f"    x_{i} = f({i})" for i in range(40)]
    lines[0], lines[27] = "def f():", "    "
    text = nl.join(lines) + nl
    offset = sum(len(x) + len(nl) for x in lines[:27]) + 4
    ctx = ctx_at(text, offset, context_tokens=1536)
    assert ctx.answer_lead == nl
    assert ctx.fim_middle == nl.join(lines[24:27]) + nl
    assert ctx.fim_prefix + ctx.fim_middle == text[: offset - 4]
    assert ctx.fim_suffix.startswith(nl.removeprefix("\r") + lines[28])


def test_inside_a_word_the_block_stays_in_the_prefix() -> None:
    lines = [f"    x_{i} = f({i})" for i in range(40)]
    lines[0], lines[27] = "def f():", "    total = defa"
    text = "\n".join(lines) + "\n"
    offset = sum(len(x) + 1 for x in lines[:27]) + len(lines[27])
    ctx = ctx_at(text, offset, context_tokens=1536)
    assert ctx.fim_middle == "" and ctx.fim_prefix.endswith("    total = defa")
    after_space = ctx_at(text[:offset] + " " + text[offset:], offset + 1, context_tokens=1536)
    assert after_space.fim_middle.endswith("    total = defa ")


def test_block_at_or_before_the_window_start_has_no_middle() -> None:
    offset = REAL.index("\n", len(REAL) // 2)
    small = ctx_at(REAL, offset, context_tokens=24)
    assert small.fim_middle == "" and small.fim_prefix == small.prefix
    text = "def f(x):\n    y = x\n    \n    return y\n"  # block 0 starts at the file's start
    ctx = ctx_at(text, text.index("    \n") + 4)
    assert ctx.fim_middle == "" and ctx.fim_prefix == "def f(x):\n    y = x"


# --------------------------------------------------------------------------- multi-line


@pytest.mark.parametrize(
    ("line_prefix", "line_suffix", "language", "setting", "previous", "expected"),
    [
        ("def f(x):", "", "python", "auto", "", True),  # after a block opener
        ("    ", "", "python", "auto", "def f(x):", True),  # empty line in a block
        ("", "", "python", "auto", "def f(x):", True),  # not yet indented, after opener
        ("", "", "python", "auto", "    return 1", True),  # empty line after indented code
        ("", "", "python", "auto", "import os", False),  # empty top-level line
        ("", "", "python", "auto", "", False),  # start of file
        ("function f() {", "", "javascript", "auto", "", True),
        ("if (x) {", "}", "javascript", "auto", "", True),  # auto-closed brace
        ("items.map((x) =>", "", "javascript", "auto", "", True),
        ("x = foo(", ")", "python", "auto", "", True),
        ("x = foo(a,", ")", "python", "auto", "", False),  # a list goes on, not a block
        ("    total = ", "", "python", "auto", "", False),  # mid-statement
        ("    total = ", "+ 1", "python", "auto", "", False),  # mid-line
        ("    # explain:", "", "python", "auto", "", False),  # comment
        ("    s = 'a: {", "", "python", "auto", "", False),  # string
        ("    // loop: {", "", "javascript", "auto", "", False),  # comment
        ("    q = a // b if c else {", "", "python", "auto", "", True),  # // is division
        ("fn f<'a>(x: &'a str) {", "", "rust", "auto", "", True),  # lifetimes
        ("    total = ", "", "python", "always", "", True),
        ("def f(x):", "", "python", "never", "", False),
    ],
)
def test_decide_multiline(line_prefix: str, line_suffix: str, language: str, setting: str,
                          previous: str, expected: bool) -> None:
    got = decide_multiline(line_prefix, line_suffix, language, setting, previous_line=previous)
    assert got is expected


def test_build_context_uses_the_previous_line_for_empty_lines() -> None:
    text = "class A:\n    def f(self):\n\n"
    assert ctx_at(text, len(text) - 1).multiline is True
    text = "import os\n\n"
    assert ctx_at(text, len(text) - 1).multiline is False


# --------------------------------------------------------------------------- gating


@pytest.mark.parametrize(
    ("text", "cursor", "manual", "untitled", "expected"),
    [
        ("", 0, False, True, "empty untitled buffer"),
        ("   \n", 0, False, True, "empty untitled buffer"),
        ("", 0, True, True, None),  # manual always asks
        ("", 0, False, False, None),  # an empty file on disk: the model may start it
        ("value = compute(x)\n", 9, False, False, "cursor inside a word"),
        ("value = compute(x)\n", 9, True, False, None),
        ("print(total)\n", 6, False, False, "text right of the cursor"),
        ("print()\n", 6, False, False, None),  # only a closer
        ('print("")\n', 7, False, False, None),  # closers and quotes
        ("foo(a, );\n", 7, False, False, None),
        ("x = y + z\n", 4, False, False, None),  # "y + z" minus spaces = 3 chars
        ("x = yy + zz\n", 4, False, False, "text right of the cursor"),
        ("def f():\n    \n", 13, False, False, None),
    ],
)
def test_skip_reason(text: str, cursor: int, manual: bool, untitled: bool,
                     expected: str | None) -> None:
    ctx = ctx_at(text, cursor, manual=manual)
    assert skip_reason(ctx, untitled=untitled) == expected


def test_a_window_start_given_by_the_caller_is_kept_when_it_is_a_line_start_above() -> None:
    text = "".join(f"value_{i} = compute({i})\n" for i in range(200))
    offset = text.index("value_150")
    natural = build_context(text, offset, uri="file:///a.py", path="a.py", language="python",
                            version=1, context_tokens=256)
    start = offset - len(natural.prefix)
    above = text.rfind("\n", 0, text.rfind("\n", 0, start - 1)) + 1  # two lines up
    ctx = build_context(text, offset, uri="file:///a.py", path="a.py", language="python",
                        version=1, context_tokens=256, window_start=above)
    assert offset - len(ctx.prefix) == above
    assert ctx.prefix_start_line == text.count("\n", 0, above)
    assert ctx.suffix == natural.suffix
    # Not a line start, or below the cursor's line: the window's own start.
    for bad in (above + 3, offset + 5):
        other = build_context(text, offset, uri="file:///a.py", path="a.py",
                              language="python", version=1, context_tokens=256,
                              window_start=bad)
        assert other.prefix == natural.prefix


# --------------------------------------------------------------------------- token estimate


@pytest.mark.parametrize(("text", "tokens"), [
    # Counted as Qwen2's tokenizer splits; the real counts (2026-12-07) are the
    # same unless the comment says otherwise.
    ("", 0),
    ("x = 1", 4),  # "x", " =", " ", "1"
    ("x = 1\n", 5),
    ("    return self._reading\n", 6),  # "   ", " return", " self", "._", "reading", "\n"
    ("h = 2.0*m1 + m2", 11),  # each digit on its own
    # A long word is several tokens (real: 8, "_s" "omething")...
    ("    value = compute_something(x)", 9),
    # ... and a very long one data, not a word (real: 44, 2-character pieces).
    ("blob = '" + "QUFBQkJC" * 8 + "'", 30),
    # Letters outside ASCII are a token each.
    ("s = 'АБВГД'", 9),
])
def test_the_token_estimate_follows_the_tokenizer(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_dense_code_is_not_counted_as_half_its_tokens() -> None:
    """colorsys.py's arithmetic has about 1.9 characters a token: characters
    / CHARS_PER_TOKEN counted about half of them, so its windows took twice
    the time they were sized for."""
    dense = ("    if l <= 0.5:\n        m2 = l * (1.0+s)\n    else:\n"
             "        m2 = l+s-(l*s)\n    m1 = 2.0*l - m2\n"
             "    return (_v(m1, m2, h+ONE_THIRD), _v(m1, m2, h), _v(m1, m2, h-ONE_THIRD))\n")
    assert estimate_tokens(dense) > 1.7 * len(dense) / CHARS_PER_TOKEN
