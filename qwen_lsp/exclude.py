"""Files that must never be sent upstream (secrets, keys, VCS internals, binaries)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from functools import lru_cache
from pathlib import Path, PurePosixPath

# How much of a file the text check looks at for stray bytes (a NUL is looked
# for everywhere), and the share of them above which it is not text.
TEXT_SAMPLE_CHARS = 65536
MAX_NON_TEXT_SHARE = 0.3
# Characters that text does not contain: C0 controls other than tab, line
# breaks, form feed and escape, and U+FFFD, which stands for an undecodable
# byte (in the editor's copy of a binary file, or in our own decoding).
_NON_TEXT = re.compile("[\x01-\x08\x0e-\x1a\x1c-\x1f\ufffd]")


def is_text(data: str | bytes) -> bool:
    """Whether content is text that may be sent to a model.

    Not text: anything with a NUL, or where more than ``MAX_NON_TEXT_SHARE``
    of the first ``TEXT_SAMPLE_CHARS`` characters are invalid UTF-8 (U+FFFD
    once decoded) or control characters. Takes the editor's already decoded
    text (``str``) or a file's bytes; a legacy-encoded text file (Latin-1
    accents) stays well below the share, random or compiled data far above.
    """
    if isinstance(data, bytes):
        if b"\0" in data:
            return False
        sample = data[: TEXT_SAMPLE_CHARS].decode("utf-8", errors="replace")
    else:
        if "\0" in data:
            return False
        sample = data[:TEXT_SAMPLE_CHARS]
    if not sample:
        return True
    return len(_NON_TEXT.findall(sample)) <= MAX_NON_TEXT_SHARE * len(sample)


def _matches(parts: tuple[str, ...], rel: str, pattern: str) -> bool:
    pat = pattern.strip()
    if not pat:
        return False
    if pat.endswith("/"):
        # A directory pattern: any path component.
        name = pat.rstrip("/")
        return any(fnmatch.fnmatchcase(p, name) for p in parts[:-1])
    if "/" in pat:
        return fnmatch.fnmatchcase(rel, pat.lstrip("/")) or fnmatch.fnmatchcase(
            rel, "*/" + pat.lstrip("/")
        )
    return fnmatch.fnmatchcase(parts[-1], pat)


def is_excluded(
    path: str | Path,
    patterns: tuple[str, ...] | list[str],
    *,
    root: Path | None = None,
    respect_gitignore: bool = False,
) -> bool:
    p = Path(path)
    try:
        rel = p.resolve().relative_to(root.resolve()).as_posix() if root else p.as_posix()
    except (ValueError, OSError):
        rel = p.as_posix()
    parts = PurePosixPath(rel).parts or (p.name,)
    if any(_matches(parts, rel, pat) for pat in patterns):
        return True
    if respect_gitignore:
        return _git_ignored(str(p))
    return False


@lru_cache(maxsize=4096)
def _git_ignored(path: str) -> bool:
    """Ask git itself (exact .gitignore semantics); cached per path."""
    try:
        res = subprocess.run(
            ["git", "check-ignore", "-q", path],
            cwd=str(Path(path).parent),
            capture_output=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0
