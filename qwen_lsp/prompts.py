"""Pure prompt builders: Qwen FIM (file and repo level) and partial-mode chat.

The layouts put what changes slowly first (repository name, other files,
the anchored start of this file) so that consecutive requests share their
prompt prefix byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwen_lsp.context import CompletionContext, ends_finished_line
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
    """``<|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>M``, repo-level when there are snippets.

    ``M`` is the code typed in the cursor's block (``ctx.fim_middle``), given as
    the start of the answer: the model continues it from the cursor.
    """
    core = f"{FIM_PREFIX}{ctx.fim_prefix}{FIM_SUFFIX}{ctx.fim_suffix}{FIM_MIDDLE}{ctx.fim_middle}"
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


def _after_cursor(ctx: CompletionContext) -> str:
    if not ctx.suffix.strip():
        return "The cursor is at the end of the file."
    fence = _fence(ctx.suffix)
    return f"The code right after the cursor (do not repeat it):\n{fence}\n{ctx.suffix}\n{fence}"


def _instruction(ctx: CompletionContext) -> str:
    if ctx.multiline:
        return "Complete the code at the cursor: finish the current statement or block."
    return "Complete only the rest of the current line."


def partial_messages(ctx: CompletionContext) -> list[dict[str, Any]]:
    """Chat messages whose last one is the partial assistant turn (the prefix)."""
    lines = [f"File: {ctx.path}" + (f" (language: {ctx.language})" if ctx.language else "")]
    for snip in ctx.snippets:
        fence = _fence(snip.text)
        lines.append(f"Related file {snip.path}:\n{fence}\n{snip.text.rstrip()}\n{fence}")
    lines.append(_after_cursor(ctx))
    lines.append(_instruction(ctx))
    return [
        {"role": "system", "content": PARTIAL_SYSTEM},
        {"role": "user", "content": "\n\n".join(lines)},
        {"role": "assistant", "content": ctx.prefix, "partial": True},
    ]


# Lines of the code before the cursor per content block of the block layout.
CACHE_CHUNK_LINES = 4
EPHEMERAL = {"type": "ephemeral"}


@dataclass(frozen=True, slots=True)
class PartialBlocks:
    """The partial-mode prompt as content blocks, the slowly changing ones first.

    ``texts`` holds the system text; the head (file, related files, the code
    after the cursor, which stays the same while the user types); the code
    before the cursor in whole ``CACHE_CHUNK_LINES``-line chunks counted from
    the window's anchored first line; and the instruction. ``tail``, the rest
    of the code up to the cursor, is the partial assistant message. Blocks up
    to ``stable_end`` stay the same while the user types below them; the
    explicit context cache marks them (see :mod:`qwen_lsp.context_cache`).
    """

    texts: tuple[str, ...]
    tail: str
    stable_end: int  # index of the last chunk (or of the head without chunks)

    @property
    def instruction(self) -> int:
        return len(self.texts) - 1


def _chunks(prefix: str) -> tuple[list[str], str]:
    """Whole chunks of the prefix; the tail keeps the cursor's line, and one
    whole line more when the cursor is at a line start (never empty)."""
    lines = prefix.split("\n")
    whole = len(lines) - 1 - (1 if not lines[-1] else 0)
    count = max(0, whole) // CACHE_CHUNK_LINES
    chunks = [
        "".join(f"{line}\n" for line in lines[i * CACHE_CHUNK_LINES:(i + 1) * CACHE_CHUNK_LINES])
        for i in range(count)
    ]
    return chunks, "\n".join(lines[count * CACHE_CHUNK_LINES:])


def partial_blocks(ctx: CompletionContext) -> PartialBlocks:
    """The block layout of :func:`partial_messages` (same information)."""
    chunks, tail = _chunks(ctx.prefix)
    head = [f"File: {ctx.path}" + (f" (language: {ctx.language})" if ctx.language else "")]
    for snip in ctx.snippets:
        fence = _fence(snip.text)
        head.append(f"Related file {snip.path}:\n{fence}\n{snip.text.rstrip()}\n{fence}")
    head.append(_after_cursor(ctx))
    start = f"The code before the cursor starts at line {ctx.prefix_start_line + 1}"
    code_fence = _fence("".join(chunks))
    if chunks:
        head.append(f"{start}; the assistant message continues it up to the cursor:\n"
                    f"{code_fence}\n")
        end = f"{code_fence}\n\n{_instruction(ctx)}"
    else:
        head.append(f"{start}; the assistant message holds it up to the cursor.")
        end = f"\n\n{_instruction(ctx)}"
    texts = (PARTIAL_SYSTEM, "\n\n".join(head), *chunks, end)
    return PartialBlocks(texts=texts, tail=tail, stable_end=1 + len(chunks))


def block_messages(blocks: PartialBlocks, marks: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Chat messages of the block layout, with cache markers on the blocks ``marks``."""

    def block(i: int) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "text", "text": blocks.texts[i]}
        if i in marks:
            out["cache_control"] = dict(EPHEMERAL)
        return out

    return [
        {"role": "system", "content": [block(0)]},
        {"role": "user", "content": [block(i) for i in range(1, len(blocks.texts))]},
        {"role": "assistant", "content": blocks.tail, "partial": True},
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
    blocks: PartialBlocks | None = None,
    marks: tuple[int, ...] = (),
    next_line: bool = False,
) -> UpstreamRequest:
    """The request for ``ctx``. In partial mode, ``blocks`` selects the block
    layout (with cache markers on ``marks``) instead of the plain one.
    ``next_line``: at the end of a finished line the answer may start with a
    line break (the next line is offered there), so the upstream does not stop
    at it."""
    limit = max_tokens if ctx.multiline else min(max_tokens, SINGLE_LINE_MAX_TOKENS)
    stop = stop_sequences(mode, extra_stop)
    offers_next = next_line and ends_finished_line(ctx.line_prefix, ctx.line_suffix)
    if (mode == "fim" and not ctx.multiline and ctx.line_prefix.strip() and "\n" not in stop
            and not offers_next):
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
    if blocks is not None:
        return UpstreamRequest(messages=block_messages(blocks, marks), **common)
    return UpstreamRequest(messages=partial_messages(ctx), **common)
