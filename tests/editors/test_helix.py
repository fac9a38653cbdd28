"""Helix: the shipped languages.toml, and the exact text Helix would insert.

Helix is not packaged for Debian 12, so the client side is reproduced from
its source: the capabilities it declares (UTF-8 first, snippets, no
cancellation), its filter (fuzzy match of filterText or label against the
typed word) and its insertion rules (textEdit, else insertText, else label;
plain text literally; snippet text, also for kind=Snippet, parsed with the
line's indentation added to later lines). The server is the real one.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from lsprotocol import types

from tests.editors.cases import CASES, IDS, Case
from tests.fake_upstream import FakeUpstream, Reply
from tests.harness import ROOT, open_doc, openai_env, start_client, stop_client

pytestmark = pytest.mark.editor

LANGUAGES_TOML = ROOT / "editors" / "helix" / "languages.toml"

# From Helix's book (languages.md) and LanguageServerFeature in its source.
SERVER_KEYS = {"command", "args", "config", "timeout", "environment", "required-root-patterns"}
FEATURES = {
    "format", "goto-declaration", "goto-definition", "goto-type-definition", "goto-reference",
    "goto-implementation", "signature-help", "hover", "document-highlight", "completion",
    "code-action", "workspace-command", "document-symbols", "workspace-symbols", "diagnostics",
    "rename-symbol", "inlay-hints", "document-colors",
}
LANGUAGE_SERVER_ENTRY_KEYS = {"name", "only-features", "except-features"}
CONFIG_KEYS = {  # camelCase keys of the server's settings (README table)
    "provider", "region", "baseUrl", "api", "apiKey", "model", "mode", "temperature",
    "maxTokens", "stop", "timeoutMs", "connectTimeoutMs", "debounceMs", "debounceMinMs",
    "debounceMaxMs", "contextTokens", "multiline", "exclude", "respectGitignore",
    "maxFileBytes", "crossFile", "logLevel", "modelPath", "threads", "contextSize",
}

HELIX_CAPABILITIES = types.ClientCapabilities(
    general=types.GeneralClientCapabilities(position_encodings=[
        types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf32,
        types.PositionEncodingKind.Utf16]),
    workspace=types.WorkspaceClientCapabilities(
        configuration=True, workspace_folders=True,
        did_change_configuration=types.DidChangeConfigurationClientCapabilities(
            dynamic_registration=False)),
    text_document=types.TextDocumentClientCapabilities(
        completion=types.CompletionClientCapabilities(
            completion_item=types.ClientCompletionItemOptions(
                snippet_support=True, insert_replace_support=True, deprecated_support=True,
                resolve_support=types.ClientCompletionItemResolveOptions(
                    properties=["documentation", "detail", "additionalTextEdits"]),
                documentation_format=[types.MarkupKind.Markdown]),
            completion_item_kind=types.ClientCompletionItemOptionsKind(
                value_set=list(types.CompletionItemKind)),
        ),
    ),
    # No general.staleRequestSupport / $/cancelRequest: Helix never cancels.
)


def test_languages_toml_uses_only_documented_keys() -> None:
    data = tomllib.loads(LANGUAGES_TOML.read_text(encoding="utf-8"))
    assert set(data) == {"language-server", "language"}
    server = data["language-server"]["qwen-lsp"]
    assert set(server) <= SERVER_KEYS
    assert server["command"] == "qwen-lsp"
    assert isinstance(server["args"], list) and isinstance(server["timeout"], int)
    assert set(server["config"]) == {"qwen"}
    assert set(server["config"]["qwen"]) <= CONFIG_KEYS
    names = [lang["name"] for lang in data["language"]]
    assert "python" in names and len(names) == len(set(names))
    for lang in data["language"]:
        assert set(lang) == {"name", "language-servers"}, lang
        entries = lang["language-servers"]
        ours = [e for e in entries if isinstance(e, dict) and e.get("name") == "qwen-lsp"]
        assert len(ours) == 1, lang
        for entry in entries:
            if isinstance(entry, dict):
                assert set(entry) <= LANGUAGE_SERVER_ENTRY_KEYS
                for key in ("only-features", "except-features"):
                    assert set(entry.get(key, [])) <= FEATURES
        assert ours[0]["only-features"] == ["completion"]
        # Beside the language's usual server, not instead of it.
        assert any(isinstance(e, str) for e in entries), lang


def helix_filter_matches(pattern: str, text: str) -> bool:
    """Helix's fuzzy filter: the typed word's characters appear in order."""
    it = iter(text.lower())
    return all(ch in it for ch in pattern.lower())


def render_helix_snippet(snippet: str, line_indent: str) -> str:
    """Helix's snippet rendering for what a completion server sends: tabstops
    become their placeholder text, escapes are resolved, later lines get the
    line's indentation."""
    out: list[str] = []
    i = 0
    while i < len(snippet):
        ch = snippet[i]
        if ch == "\\" and i + 1 < len(snippet) and snippet[i + 1] in "$}\\":
            out.append(snippet[i + 1])
            i += 2
            continue
        if ch == "$":
            m = re.match(r"\$(\d+)|\$\{(\d+)(?::([^}]*))?\}", snippet[i:])
            assert m, f"unparsable snippet at {snippet[i:]!r}"
            out.append(m.group(3) or "")
            i += m.end()
            continue
        out.append(ch)
        i += 1
    first, *rest = "".join(out).split("\n")
    return "\n".join([first] + [line_indent + line for line in rest])


def utf8_offset(text: str, pos: types.Position) -> int:
    lines = text.split("\n")
    start = sum(len(line) + 1 for line in lines[: pos.line])
    line = lines[pos.line].encode("utf-8")
    return start + len(line[: pos.character].decode("utf-8"))


def helix_apply(text: str, cursor: types.Position, item: types.CompletionItem) -> str:
    edit = item.text_edit
    if isinstance(edit, types.InsertReplaceEdit):
        rng, new = edit.insert, edit.new_text  # completion-replace = false (default)
    elif edit is not None:
        rng, new = edit.range, edit.new_text
    else:
        rng = types.Range(start=cursor, end=cursor)
        new = item.insert_text or item.label
    line = text.split("\n")[cursor.line]
    indent = line[: len(line) - len(line.lstrip(" \t"))]
    if (item.insert_text_format == types.InsertTextFormat.Snippet
            or item.kind == types.CompletionItemKind.Snippet):
        new = render_helix_snippet(new, indent)
    start, end = utf8_offset(text, rng.start), utf8_offset(text, rng.end)
    return text[:start] + new + text[end:]


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_helix_inserts_exact_text(case: Case, tmp_path: Path) -> None:
    uri = (tmp_path / "greet.py").as_uri()
    line = case.before.split("\n")[case.line]
    # UTF-8 columns: the server must pick utf-8 (Helix's first choice); with
    # any other encoding this column lies past the line's end.
    cursor = types.Position(line=case.line, character=len(line.encode("utf-8")))
    with FakeUpstream(Reply(text=case.reply, chunks=[case.reply])) as fake:
        client = await start_client(
            openai_env(tmp_path, fake.openai_base), capabilities=HELIX_CAPABILITIES,
            client_name="helix", root=tmp_path,
            configuration={"qwen": {"model": "qwen2.5-coder-7b-instruct"}},
            init_options={"qwen": {"model": "qwen2.5-coder-7b-instruct"}})
        try:
            open_doc(client, uri, case.before)
            # A trailing space is one of the server's trigger characters.
            trigger = line[-1] if line.endswith(" ") else None
            result = await client.text_document_completion_async(types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=cursor,
                context=types.CompletionContext(
                    trigger_kind=types.CompletionTriggerKind.TriggerCharacter if trigger
                    else types.CompletionTriggerKind.Invoked,
                    trigger_character=trigger)))
        finally:
            await stop_client(client)
    items = result.items if isinstance(result, types.CompletionList) else result
    assert len(items) == 1
    item = items[0]
    assert "\n" not in item.label
    typed = re.search(r"\w*$", line).group(0)
    assert helix_filter_matches(typed, item.filter_text or item.label)
    assert helix_apply(case.before, cursor, item) == case.after
    assert [r for r in fake.requests if r.path.endswith("/completions")]
    assert fake.requests[-1].json["model"] == "qwen2.5-coder-7b-instruct"
