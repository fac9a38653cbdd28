"""Suggestion cache: exact, typed-through and forward entries.

Entries are keyed by the text around the cursor (the tail of the prefix and
the head of the suffix), not by URI, so two buffers with the same context
share them. A lookup walks back over the characters typed since a suggestion
was made: if the suggestion starts with them, the rest is served with no
upstream call. Storing a suggestion also stores it at the end of each of its
lines, so accepting part of a multi-line suggestion leaves the remaining
lines available.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from qwen_lsp.postprocess import Suggestion

KEY_PREFIX_CHARS = 1500
KEY_SUFFIX_CHARS = 400
MAX_TYPED_THROUGH = 160


def _key(prefix: str, suffix: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(prefix[-KEY_PREFIX_CHARS:].encode("utf-8", "surrogatepass"))
    h.update(b"\x00\x01")
    h.update(suffix[:KEY_SUFFIX_CHARS].encode("utf-8", "surrogatepass"))
    return h.digest()


@dataclass(frozen=True, slots=True)
class CacheHit:
    suggestion: Suggestion
    typed: int  # characters typed through since the entry was stored (0: exact hit)


class CompletionCache:
    def __init__(
        self,
        maxsize: int = 4096,
        ttl: float = 600.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: TTLCache[bytes, Suggestion] = TTLCache(maxsize, ttl, timer=timer)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def get(self, prefix: str, suffix: str) -> CacheHit | None:
        """Exact or typed-through lookup."""
        hit = self._entries.get(_key(prefix, suffix))
        if hit is not None:
            return CacheHit(hit, 0)
        limit = min(MAX_TYPED_THROUGH, len(prefix))
        for k in range(1, limit + 1):
            # Slice only the key's window, not the whole prefix, at each step.
            entry = self._entries.get(_key(prefix[-(KEY_PREFIX_CHARS + k) : -k], suffix))
            if entry is None:
                continue
            typed = prefix[-k:]
            if entry.text.startswith(typed) and len(entry.text) > k:
                rest = entry.text[k:]
                if rest.strip():
                    return CacheHit(Suggestion(rest, entry.replace_suffix_chars), k)
            # The nearest entry decides: older ones describe older contexts.
            return None
        return None

    def put(self, prefix: str, suffix: str, suggestion: Suggestion) -> None:
        """Store a suggestion and its forward entries (at each of its line ends)."""
        self._entries[_key(prefix, suffix)] = suggestion
        text = suggestion.text
        pos = text.find("\n")
        while 0 <= pos < len(text) - 1:
            rest = text[pos:]
            if rest.strip():
                # At the end of a line, before its newline: the rest starts with "\n".
                self._entries[_key(prefix + text[:pos], suffix)] = Suggestion(
                    rest, suggestion.replace_suffix_chars
                )
            pos = text.find("\n", pos + 1)
