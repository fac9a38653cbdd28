"""Pure prompt builders: Qwen FIM (file and repo level) and partial-mode chat.

The layouts put what changes slowly first (repository name, other files,
the anchored start of this file) so that consecutive requests share their
prompt prefix byte for byte.
"""

from __future__ import annotations

from typing import Any

from qwen_lsp.context import CompletionContext
from qwen_lsp.providers.base import QWEN_SPECIAL_TOKENS, UpstreamRequest

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
REPO_NAME = "<|repo_name|>"
FILE_SEP = "<|file_sep|>"

SINGLE_LINE_MAX_TOKENS = 48

PARTIAL_SYSTEM = (
    "You are a code completion engine inside a code editor. The assistant message "
    "holds the file's code up to the cursor. Continue it exactly from its last "
    "character with the code that belongs at the cursor. Reply with code only: "
    "no explanations, no Markdown fences, and never repeat code that is already "
    "written before or after the cursor."
)


def fim_prompt(ctx: CompletionContext) -> str:
    """``<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>``, repo-level when there are snippets."""
    core = f"{FIM_PREFIX}{ctx.fim_prefix}{FIM_SUFFIX}{ctx.fim_suffix}{FIM_MIDDLE}"
    if not ctx.snippets:
        return core
    parts = [f"{REPO_NAME}{ctx.repo_name or 'workspace'}\n"]
    for snip in ctx.snippets:
        body = snip.text if snip.text.endswith("\n") else snip.text + "\n"
        parts.append(f"{FILE_SEP}{snip.path}\n{body}")
    parts.append(f"{FILE_SEP}{ctx.path}\n{core}")
    return "".join(parts)


def _fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return fence


def partial_messages(ctx: CompletionContext) -> list[dict[str, Any]]:
    """Chat messages whose last one is the partial assistant turn (the prefix)."""
    lines = [f"File: {ctx.path}" + (f" (language: {ctx.language})" if ctx.language else "")]
    for snip in ctx.snippets:
        fence = _fence(snip.text)
        lines.append(f"Related file {snip.path}:\n{fence}\n{snip.text.rstrip()}\n{fence}")
    if ctx.suffix.strip():
        fence = _fence(ctx.suffix)
        lines.append(
            "The code right after the cursor (do not repeat it):\n"
            f"{fence}\n{ctx.suffix}\n{fence}"
        )
    else:
        lines.append("The cursor is at the end of the file.")
    if ctx.multiline:
        lines.append("Complete the code at the cursor: finish the current statement or block.")
    else:
        lines.append("Complete only the rest of the current line.")
    return [
        {"role": "system", "content": PARTIAL_SYSTEM},
        {"role": "user", "content": "\n\n".join(lines)},
        {"role": "assistant", "content": ctx.prefix, "partial": True},
    ]


def stop_sequences(mode: str, extra: tuple[str, ...] | list[str] = ()) -> list[str]:
    base = list(QWEN_SPECIAL_TOKENS) if mode == "fim" else []
    return base + [s for s in extra if s and s not in base]


def build_request(
    ctx: CompletionContext,
    *,
    mode: str,
    max_tokens: int,
    temperature: float,
    extra_stop: tuple[str, ...] = (),
    extra_body: dict[str, Any] | None = None,
) -> UpstreamRequest:
    limit = max_tokens if ctx.multiline else min(max_tokens, SINGLE_LINE_MAX_TOKENS)
    stop = stop_sequences(mode, extra_stop)
    if mode == "fim" and not ctx.multiline and ctx.line_prefix.strip() and "\n" not in stop:
        # Mid-line only the rest of this line is shown: the upstream stops at
        # the newline by itself, so the stream ends normally (exact usage, and
        # the connection stays open for the next request) instead of being
        # closed by us. Not on a blank line (its answer starts with a newline)
        # nor in partial mode (chat models may open with a fence line).
        stop.append("\n")
    common = {
        "max_tokens": limit,
        "temperature": temperature,
        "stop": stop,
        "extra": dict(extra_body or {}),
    }
    if mode == "fim":
        return UpstreamRequest(prompt=fim_prompt(ctx), **common)
    return UpstreamRequest(messages=partial_messages(ctx), **common)
