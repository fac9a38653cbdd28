"""Item shaping per client: what each editor is sent, and what it ends up inserting.

Client capabilities are the captured ones pytest-lsp ships (real editors),
plus Helix's, built from its source (it is not in that collection).
"""

from __future__ import annotations

import re

import pytest
from lsprotocol import types
from pytest_lsp import client_capabilities

from qwen_lsp.items import (
    client_profile,
    completion_list,
    escape_snippet,
    inline_items,
    relative_indent,
)
from qwen_lsp.postprocess import Suggestion

HELIX_CAPS = types.ClientCapabilities(
    general=types.GeneralClientCapabilities(position_encodings=[
        types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf32,
        types.PositionEncodingKind.Utf16]),
    text_document=types.TextDocumentClientCapabilities(
        completion=types.CompletionClientCapabilities(
            completion_item=types.ClientCompletionItemOptions(
                snippet_support=True, insert_replace_support=True,
                documentation_format=[types.MarkupKind.Markdown]))),
)


def profile(name: str, caps: str | types.ClientCapabilities):
    c = client_capabilities(caps) if isinstance(caps, str) else caps
    return client_profile(types.ClientInfo(name=name), c)


def vim_snippet_expand(snippet: str, base_indent: str) -> str:
    """What vim.snippet.expand leaves in the buffer for a tabstop-free snippet:
    escapes resolved, the line's indentation added to every later line."""
    text = re.sub(r"\\([$}\\])", r"\1", snippet)
    first, *rest = text.split("\n")
    return "\n".join([first] + [base_indent + line for line in rest])


def build(prof, suggestion: str, word: str = "", indent: str = "    ",
          replace: int = 0) -> types.CompletionItem:
    start = types.Position(line=3, character=10 - len(word))
    end = types.Position(line=3, character=10 + replace)
    result = completion_list(Suggestion(suggestion, replace), profile=prof, word=word,
                             line_indent=indent, word_start=start, replace_end=end,
                             language="python")
    assert len(result.items) == 1
    return result.items[0]


def test_profiles_from_real_capabilities() -> None:
    vscode = profile("Visual Studio Code", "visual_studio_code@v1.65.2")
    assert (vscode.name, vscode.snippets, vscode.as_is) == ("vscode", False, True)
    nvim11 = profile("Neovim", "neovim@v0.11.0")
    assert (nvim11.name, nvim11.snippets) == ("neovim", True)
    nvim7 = profile("Neovim", "neovim@v0.7.0")  # no snippetSupport before 0.10
    assert (nvim7.name, nvim7.snippets) == ("neovim", False)
    emacs = profile("Eglot", "emacs@v29.1")
    assert (emacs.name, emacs.snippets) == ("emacs", False)
    helix = profile("helix", HELIX_CAPS)
    assert (helix.name, helix.snippets, helix.as_is) == ("helix", False, False)
    assert client_profile(None, None).name == "other"


MULTI = "\n        print(n)\n        names.append(n)"


def test_neovim_snippet_expands_to_absolute_indentation() -> None:
    item = build(profile("Neovim", "neovim@v0.11.0"), MULTI)
    assert item.insert_text_format == types.InsertTextFormat.Snippet
    assert vim_snippet_expand(item.text_edit.new_text, "    ") == MULTI


def test_snippet_escapes_dollar_brace_backslash() -> None:
    text = 'f"${x}" + "\\\\"\n    }'
    item = build(profile("Neovim", "neovim@v0.11.0"), text)
    assert "$" not in item.text_edit.new_text.replace("\\$", "")
    assert vim_snippet_expand(item.text_edit.new_text, "    ") == text
    assert escape_snippet("a$b}c\\") == "a\\$b\\}c\\\\"


@pytest.mark.parametrize("name,caps", [
    ("Visual Studio Code", "visual_studio_code@v1.65.2"),
    ("helix", HELIX_CAPS),
    ("Eglot", "emacs@v29.1"),
    ("Neovim", "neovim@v0.7.0"),
])
def test_plain_clients_get_verbatim_text(name: str, caps) -> None:
    prof = profile(name, caps)
    item = build(prof, MULTI)
    assert item.insert_text_format == types.InsertTextFormat.PlainText
    assert item.text_edit.new_text == MULTI
    assert item.insert_text is None  # eglot 1.9 would prefer it over textEdit
    expected_mode = types.InsertTextMode.AsIs if prof.as_is else None
    assert item.insert_text_mode == expected_mode


def test_label_filter_text_and_range_cover_the_typed_word() -> None:
    item = build(profile("helix", HELIX_CAPS), "me.upper())", word="na", replace=1)
    assert item.label == "name.upper())"
    assert item.filter_text.startswith("na")
    assert item.text_edit.new_text == "name.upper())"
    assert item.text_edit.range == types.Range(start=types.Position(3, 8),
                                               end=types.Position(3, 11))


def test_label_is_one_line_and_filter_text_never_empty() -> None:
    item = build(profile("Eglot", "emacs@v29.1"), MULTI)
    assert item.label == "print(n)"
    assert item.filter_text == "print(n)"
    long = "x = " + "a" * 200
    assert len(build(profile("Eglot", "emacs@v29.1"), long).label) <= 60


def test_documentation_is_a_code_block_of_the_full_text() -> None:
    item = build(profile("Visual Studio Code", "visual_studio_code@v1.65.2"), "me()", word="na")
    assert isinstance(item.documentation, types.MarkupContent)
    assert item.documentation.value == "```python\nname()\n```"


def test_relative_indent_keeps_blank_and_dedented_lines() -> None:
    assert relative_indent("a\n        b\n\n    c\nd", "    ") == "a\n    b\n\nc\nd"
    assert relative_indent("one line", "    ") == "one line"


def test_inline_item_range_is_single_line() -> None:
    cursor = types.Position(2, 5)
    end = types.Position(2, 6)
    result = inline_items(Suggestion("x)\n    y", 1), cursor, end)
    item = result.items[0]
    assert item.insert_text == "x)\n    y"
    assert item.range.start == cursor and item.range.end == end
    assert item.range.start.line == item.range.end.line
