"""Cross-file context: other open files, most recently used first.

Selection is cached per (document, block of lines) so the snippets, and with
them the start of the prompt, stay byte-identical while the user types in one
place; that keeps provider prefix caches warm.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from qwen_lsp.context import Snippet
from qwen_lsp.exclude import is_excluded

MAX_FILES = 4
SNIPPET_LINES = 60
BLOCK_LINES = 32
SELECTION_TTL = 30.0


class Neighbours:
    def __init__(self) -> None:
        self.root: Path | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._chosen: dict[tuple[str, int], tuple[float, tuple[Snippet, ...]]] = {}

    def touch(self, uri: str) -> None:
        self._recent.pop(uri, None)
        self._recent[uri] = None
        while len(self._recent) > 64:
            self._recent.popitem(last=False)

    def snippets_for(
        self, doc: Any, offset: int, *, documents: Any, settings: Any, root: Path | None
    ) -> tuple[Snippet, ...]:
        line = doc.text.count("\n", 0, offset)
        key = (doc.uri, line // BLOCK_LINES)
        now = time.monotonic()
        cached = self._chosen.get(key)
        if cached and now - cached[0] < SELECTION_TTL:
            return cached[1]
        chosen: list[Snippet] = []
        for uri in reversed(self._recent):
            if uri == doc.uri or len(chosen) >= MAX_FILES:
                continue
            other = documents.get(uri)
            if other is None or not uri.startswith("file:"):
                continue
            path = Path(uri[len("file://"):])
            if len(other.text) > settings.max_file_bytes or is_excluded(
                path, settings.exclude, root=root, respect_gitignore=settings.respect_gitignore
            ):
                continue
            rel = path.name
            if root:
                try:
                    rel = path.resolve().relative_to(root.resolve()).as_posix()
                except (ValueError, OSError):
                    pass
            head = "\n".join(other.text.split("\n", SNIPPET_LINES)[:SNIPPET_LINES])
            chosen.append(Snippet(rel, head))
        # Stable order (by path) so the prompt's start does not depend on recency.
        result = tuple(sorted(chosen, key=lambda s: s.path))
        if len(self._chosen) > 512:
            self._chosen.clear()
        self._chosen[key] = (now, result)
        return result
