"""Turn a suggestion into LSP items that each editor inserts exactly.

Editors disagree about multi-line completion items (see the README's editor
sections): VS Code re-indents them unless ``insertTextMode`` is ``asIs``;
Neovim 0.11 keeps only the first word of a plain ``textEdit`` but expands
snippets and adds the line's indentation to their later lines; Helix and
eglot insert plain text literally. So: a snippet with indentation relative to
the cursor line for Neovim, plain text with absolute indentation elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from lsprotocol import types

from qwen_lsp.postprocess import Suggestion

LABEL_MAX = 60


@dataclass(frozen=True, slots=True)
class ClientProfile:
    name: str  # vscode | neovim | helix | emacs | other
    snippets: bool  # send completion text as an escaped snippet
    as_is: bool  # client honours insertTextMode=asIs
    markdown: bool = True  # documentation may be Markdown


def client_profile(
    client_info: types.ClientInfo | None, caps: types.ClientCapabilities | None
) -> ClientProfile:
    raw = (client_info.name if client_info else "").lower()
    if "code" in raw and "visual" in raw or raw.startswith("vscode"):
        name = "vscode"
    elif "neovim" in raw or raw == "nvim":
        name = "neovim"
    elif "helix" in raw:
        name = "helix"
    elif "eglot" in raw or "emacs" in raw:
        name = "emacs"
    else:
        name = "other"
    item_caps = None
    if caps and caps.text_document and caps.text_document.completion:
        item_caps = caps.text_document.completion.completion_item
    snippet_ok = bool(item_caps and item_caps.snippet_support)
    modes = (
        item_caps.insert_text_mode_support.value_set
        if item_caps and item_caps.insert_text_mode_support
        else []
    )
    as_is = types.InsertTextMode.AsIs in modes
    doc_formats = item_caps.documentation_format if item_caps else None
    markdown = bool(doc_formats) and types.MarkupKind.Markdown in doc_formats
    # Only Neovim needs snippets; elsewhere plain text is inserted verbatim,
    # which is the most predictable.
    return ClientProfile(
        name=name, snippets=snippet_ok and name == "neovim", as_is=as_is, markdown=markdown
    )


def escape_snippet(text: str) -> str:
    return text.replace("\\", "\\\\").replace("$", "\\$").replace("}", "\\}")


def relative_indent(text: str, base: str) -> str:
    """Remove the cursor line's indentation from the text's later lines."""
    if not base or "\n" not in text:
        return text
    first, *rest = text.split("\n")
    out = [first]
    for line in rest:
        if line.startswith(base):
            out.append(line[len(base):])
        elif not line.strip():
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def _label(text: str) -> str:
    first = next((ln.strip() for ln in text.split("\n") if ln.strip()), "")
    return first if len(first) <= LABEL_MAX else first[: LABEL_MAX - 1] + "…"


def inline_items(
    suggestion: Suggestion, cursor: types.Position, replace_end: types.Position
) -> types.InlineCompletionList:
    return types.InlineCompletionList(
        items=[
            types.InlineCompletionItem(
                insert_text=suggestion.text,
                range=types.Range(start=cursor, end=replace_end),
            )
        ]
    )


def completion_list(
    suggestion: Suggestion,
    *,
    profile: ClientProfile,
    word: str,
    line_indent: str,
    word_start: types.Position,
    replace_end: types.Position,
    language: str,
) -> types.CompletionList:
    """One item: label = first line, textEdit from the word start, full text."""
    full = word + suggestion.text
    if profile.snippets:
        new_text = escape_snippet(relative_indent(full, line_indent))
        fmt = types.InsertTextFormat.Snippet
    else:
        new_text = full
        fmt = types.InsertTextFormat.PlainText
    label = _label(full) or full.strip() or "…"
    # Clients filter on filterText against the word typed before the cursor,
    # so it must start with that word; when the suggestion begins with a line
    # break there is nothing after the word on this line, so use the label.
    filter_text = word + suggestion.text.split("\n", 1)[0]
    if not filter_text.strip():
        filter_text = label
    item = types.CompletionItem(
        label=label,
        kind=types.CompletionItemKind.Text,
        detail="Qwen-Coder",
        filter_text=filter_text,
        sort_text="0000",
        preselect=True,
        insert_text_format=fmt,
        insert_text_mode=types.InsertTextMode.AsIs if profile.as_is else None,
        text_edit=types.TextEdit(range=types.Range(start=word_start, end=replace_end),
                                 new_text=new_text),
        documentation=types.MarkupContent(
            kind=types.MarkupKind.Markdown, value=f"```{language}\n{full}\n```"
        ) if profile.markdown else full,
    )
    # isIncomplete: clients ask again as the user types; the cache answers.
    return types.CompletionList(is_incomplete=True, items=[item])
