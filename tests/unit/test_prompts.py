"""Prompt layouts: Qwen file-level and repo-level FIM, partial-mode chat messages."""

from __future__ import annotations

import pytest

from qwen_lsp.context import Snippet, build_context
from qwen_lsp.prompts import (
    SINGLE_LINE_MAX_TOKENS,
    build_request,
    fim_prompt,
    partial_messages,
    stop_sequences,
)
from qwen_lsp.providers.base import QWEN_SPECIAL_TOKENS

SRC = "def add(a, b):\n    return \n\nprint(add(1, 2))\n"
CURSOR = SRC.index("return ") + len("return ")


def make(snippets: tuple[Snippet, ...] = (), repo: str = "", **kw: object):
    return build_context(SRC, CURSOR, uri="file:///ws/calc.py", path="src/calc.py",
                         language="python", version=1, context_tokens=1024,
                         snippets=snippets, repo_name=repo, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("snippets", "repo", "expected"),
    [
        pytest.param(
            (), "shop",
            "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n"
            "<|fim_middle|>",
            id="file-level",
        ),
        pytest.param(
            (Snippet("src/util.py", "def sub(a, b):\n    return a - b\n"),
             Snippet("src/num.py", "ZERO = 0")),
            "shop",
            "<|repo_name|>shop\n"
            "<|file_sep|>src/num.py\nZERO = 0\n"
            "<|file_sep|>src/util.py\ndef sub(a, b):\n    return a - b\n"
            "<|file_sep|>src/calc.py\n"
            "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n"
            "<|fim_middle|>",
            id="repo-level",
        ),
        pytest.param(
            (Snippet("u.py", "X = 1\n"),), "",
            "<|repo_name|>workspace\n<|file_sep|>u.py\nX = 1\n<|file_sep|>src/calc.py\n"
            "<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n\nprint(add(1, 2))\n"
            "<|fim_middle|>",
            id="repo-level-no-root-name",
        ),
    ],
)
def test_fim_prompt_exact(snippets: tuple[Snippet, ...], repo: str, expected: str) -> None:
    assert fim_prompt(make(snippets, repo)) == expected


def test_partial_messages_label_files_and_end_with_the_open_assistant_turn() -> None:
    ctx = make((Snippet("src/util.py", "def sub(a, b):\n    return a - b\n"),))
    msgs = partial_messages(ctx)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[-1] == {"role": "assistant", "content": "def add(a, b):\n    return ",
                        "partial": True}
    user = msgs[1]["content"]
    assert user.startswith("File: src/calc.py (language: python)")
    assert "Related file src/util.py:\n```\ndef sub(a, b):\n    return a - b\n```" in user
    assert "print(add(1, 2))" in user


def test_partial_fence_is_longer_than_any_fence_in_the_code() -> None:
    ctx = make((Snippet("README.md", "```py\nx\n```\n"),))
    user = partial_messages(ctx)[1]["content"]
    assert "Related file README.md:\n````\n```py\nx\n```\n````" in user


@pytest.mark.parametrize(
    ("mode", "multiline_setting", "max_tokens", "want_limit", "fim"),
    [
        ("fim", "never", 128, SINGLE_LINE_MAX_TOKENS, True),
        ("fim", "always", 128, 128, True),
        ("fim", "never", 16, 16, True),
        ("partial", "always", 200, 200, False),
    ],
)
def test_build_request(mode: str, multiline_setting: str, max_tokens: int, want_limit: int,
                       fim: bool) -> None:
    ctx = make(multiline_setting=multiline_setting)
    req = build_request(ctx, mode=mode, max_tokens=max_tokens, temperature=0.0,
                        extra_stop=("\n\n\n",))
    assert req.max_tokens == want_limit
    assert (req.prompt is not None) is fim and (req.messages is not None) is not fim
    newline = ["\n"] if fim and multiline_setting == "never" else []  # mid-line, single
    specials = list(QWEN_SPECIAL_TOKENS) if fim else []
    assert req.stop == specials + ["\n\n\n"] + newline


BLANK = SRC.index("\n\nprint") + 1  # the empty line between the function and the call


@pytest.mark.parametrize(
    ("mode", "offset", "multiline_setting", "stops_at_newline"),
    [
        ("fim", CURSOR, "never", True),  # mid-line: the line is all we show
        ("fim", CURSOR, "auto", True),  # auto is single-line after `return `
        ("fim", CURSOR, "always", False),  # the block must come through
        ("fim", BLANK, "never", False),  # the answer starts with a newline
        ("partial", CURSOR, "never", False),  # a chat model may open with a fence
    ],
)
def test_newline_stop_only_where_one_line_is_all_we_show(
    mode: str, offset: int, multiline_setting: str, stops_at_newline: bool
) -> None:
    ctx = build_context(SRC, offset, uri="file:///ws/calc.py", path="src/calc.py",
                        language="python", version=1, context_tokens=1024,
                        multiline_setting=multiline_setting)
    req = build_request(ctx, mode=mode, max_tokens=64, temperature=0.0)
    assert ("\n" in req.stop) is stops_at_newline


def test_next_line_drops_the_newline_stop_at_a_line_end_only() -> None:
    src = "def f(x):\n    y = g(x)\n    return y\n"
    end = src.index("g(x)") + len("g(x)")  # the end of a finished line
    mid = src.index("(x)\n    return")  # before "(x)": text right of the cursor
    for offset, stops_when_on in ((end, False), (mid, True)):
        ctx = build_context(src, offset, uri="file:///ws/f.py", path="f.py", language="python",
                            version=1, context_tokens=512, multiline_setting="never")
        off = build_request(ctx, mode="fim", max_tokens=64, temperature=0.0)
        on = build_request(ctx, mode="fim", max_tokens=64, temperature=0.0, next_line=True)
        assert "\n" in off.stop  # remote upstreams keep the stop (and their connection)
        assert ("\n" in on.stop) is stops_when_on


@pytest.mark.parametrize(("line", "offers_next"), [
    ('    "data": "starts here",', True),  # an item with its comma: the next item is below
    ("    total = ", False),  # the statement goes on where it is
    ("    y = a +", False),
    ("    y = g(", False),
    ("    y = g(x)", True),
])
def test_the_next_line_is_offered_after_a_line_that_ends_with_its_comma(
        line: str, offers_next: bool) -> None:
    # Stopped at "\n", the model's answer there was nothing ("qwen-lsp complete"
    # at the end of such a line printed nothing, the end tokens forbidden or not).
    src = f"def f(x):\n    d = {{\n{line}\n    }}\n"
    offset = src.index(line) + len(line)
    ctx = build_context(src, offset, uri="file:///ws/f.py", path="f.py", language="python",
                        version=1, context_tokens=512, multiline_setting="never")
    on = build_request(ctx, mode="fim", max_tokens=64, temperature=0.0, next_line=True)
    assert ("\n" not in on.stop) is offers_next


def test_stop_sequences_do_not_repeat() -> None:
    assert stop_sequences("fim", ("<|endoftext|>", "x")) == [*QWEN_SPECIAL_TOKENS, "x"]
    assert stop_sequences("partial", ("x", "")) == ["x"]
