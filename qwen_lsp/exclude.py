"""Files that must never be sent upstream (secrets, keys, VCS internals)."""

from __future__ import annotations

import fnmatch
import subprocess
from functools import lru_cache
from pathlib import Path, PurePosixPath


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
