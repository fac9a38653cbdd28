"""Cross-file context: pieces of other workspace files that may help at the cursor.

Candidates come from two sources:

* recently opened or edited documents (the editor's copy of their text), and
* files the current document imports, resolved from its import lines for
  Python, JavaScript/TypeScript, Go, Rust, Java and C/C++ ``#include "..."``
  to files under the workspace root (read from disk, size-capped, cached by
  modification time).

Each candidate file is cut into chunks of ``CHUNK_LINES`` lines, and chunks are
ranked by Jaccard similarity between their identifier sets and the lines
around the cursor. An imported file also offers an *outline*: only the lines
that define the names the current file imports from it (or uses as
``module.name``), i.e. the signatures the code at the cursor can call; it is
small and ranks first. A chunk that defines a name used near the cursor gets a
bonus and is cut to start at that definition (budgets keep heads). Chunks that
(nearly) copy the code around the cursor are dropped: they make the model
repeat what is already there. The result is best first; the context builder
keeps what fits its budget and renders the kept ones in path order.

The whole selection runs under a small time budget (``TIME_BUDGET_S``): it is
synchronous and runs on the event loop, so it stops early rather than block.
Files matching ``exclude`` are never read or used.

The result is cached per (document, block of lines) for ``SELECTION_TTL``
seconds, so the snippets, and with them the start of the prompt, stay
byte-identical while the user types in one place; that keeps the KV cache of
a local engine and the provider's prefix cache warm.
"""

from __future__ import annotations

import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from qwen_lsp.context import Snippet
from qwen_lsp.exclude import is_excluded, is_text

MAX_SNIPPETS = 4  # chunks in one prompt (outlines are small)
MAX_PER_FILE = 2
MAX_RECENT = 8  # recently used documents considered
MAX_IMPORTS = 12  # imported files considered
CHUNK_LINES = 40
QUERY_LINES_ABOVE = 30
QUERY_LINES_BELOW = 10
MIN_SCORE = 0.02  # below this a chunk is noise: sending nothing is better
COPY_SCORE = 0.9  # above this a chunk repeats the code at the cursor
IMPORT_BONUS = 0.05
DEFINES_BONUS = 0.15
OUTLINE_BONUS = 0.25  # signatures of what the file imports: dense in usable names
BLOCK_LINES = 32
SELECTION_TTL = 30.0
SHORT_TTL = 3.0
TIME_BUDGET_S = 0.02
READ_CAP_BYTES = 256 * 1024  # never read more than this of any file
IMPORT_SCAN_LINES = 400  # imports live at the top

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


# --------------------------------------------------------------------------- imports


@dataclass(frozen=True, slots=True)
class ImportRef:
    """One import line, reduced to what resolution needs."""

    kind: str  # "py", "js", "go", "rust-mod", "rust-use", "java", "c"
    target: str  # module path / specifier as written
    names: tuple[str, ...] = ()  # names imported from it (Python "from x import a, b")
    level: int = 0  # Python relative-import dots


_PY_FROM = re.compile(r"^\s*from\s+(\.*)([\w.]*)\s+import\s+\(?([^#]*)")
_PY_IMPORT = re.compile(r"^\s*import\s+([\w., ]+)")
_JS_SPEC = re.compile(
    r"""(?:\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*)(['"])(\.{1,2}/[^'"]+|/[^'"]+)\1"""
)
_GO_SINGLE = re.compile(r'^\s*import\s+(?:[\w.]+\s+)?"([^"]+)"')
_GO_BLOCK_LINE = re.compile(r'^\s*(?:[\w.]+\s+)?"([^"]+)"')
_RUST_MOD = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;")
_RUST_USE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+((?:crate|super|self)(?:::\w+)+)")
_JAVA = re.compile(r"^\s*import\s+(?:static\s+)?([\w.]+(?:\.\*)?)\s*;")
_C_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')

_LANG_FAMILY = {
    "python": "py",
    "javascript": "js", "javascriptreact": "js", "typescript": "js", "typescriptreact": "js",
    "go": "go", "rust": "rust", "java": "java",
    "c": "c", "cpp": "c", "objective-c": "c", "objective-cpp": "c",
}  # fmt: skip
_EXT_FAMILY = {
    ".py": "py", ".pyi": "py", ".js": "js", ".jsx": "js", ".mjs": "js", ".cjs": "js",
    ".ts": "js", ".tsx": "js", ".mts": "js", ".cts": "js", ".go": "go", ".rs": "rust",
    ".java": "java", ".c": "c", ".h": "c", ".cc": "c", ".cpp": "c", ".hpp": "c", ".cxx": "c",
}  # fmt: skip
_JS_EXTS = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts")


def language_family(language: str, path: Path | None) -> str:
    fam = _LANG_FAMILY.get(language.lower(), "")
    if not fam and path is not None:
        fam = _EXT_FAMILY.get(path.suffix.lower(), "")
    return fam


def _py_names(raw: str) -> tuple[str, ...]:
    names = []
    raw = raw.split(")")[0]
    for part in raw.replace("(", " ").replace("\\", " ").replace("\n", ",").split(","):
        word = part.strip().split(" as ")[0].strip()
        if word.isidentifier():
            names.append(word)
    return tuple(names)


_JS_NAMES = re.compile(r"^\s*(?:import|export)\s+(?:type\s+)?(?:(\w+)\s*,?\s*)?(?:\{([^}]*)\})?")


def _js_names(line: str) -> tuple[str, ...]:
    """Names an ES import line brings in: ``import A, { b, c as d } from``."""
    m = _JS_NAMES.match(line)
    if not m:
        return ()
    names = [m.group(1)] if m.group(1) and m.group(1) not in ("from", "type") else []
    for part in (m.group(2) or "").split(","):
        word = part.strip().split(" as ")[0].strip()
        if word.isidentifier():
            names.append(word)
    return tuple(names)


def parse_imports(text: str, family: str) -> list[ImportRef]:
    """The imports written in ``text`` (first IMPORT_SCAN_LINES lines)."""
    refs: list[ImportRef] = []
    in_go_block = False
    lines = text.split("\n", IMPORT_SCAN_LINES)[:IMPORT_SCAN_LINES]
    for i, line in enumerate(lines):
        if family == "py":
            if m := _PY_FROM.match(line):
                names = m.group(3)
                if "(" in line and ")" not in names:
                    # A parenthesised list over several lines.
                    for more in lines[i + 1 : i + 60]:
                        names += "," + more.split("#")[0]
                        if ")" in more:
                            break
                refs.append(ImportRef("py", m.group(2), _py_names(names), len(m.group(1))))
            elif m := _PY_IMPORT.match(line):
                for part in m.group(1).split(","):
                    mod = part.strip().split(" as ")[0].strip()
                    if mod:
                        refs.append(ImportRef("py", mod))
        elif family == "js":
            names = _js_names(line)
            refs.extend(ImportRef("js", m.group(2), names) for m in _JS_SPEC.finditer(line))
        elif family == "go":
            if in_go_block:
                if line.strip().startswith(")"):
                    in_go_block = False
                elif m := _GO_BLOCK_LINE.match(line):
                    refs.append(ImportRef("go", m.group(1)))
            elif re.match(r"^\s*import\s*\(", line):
                in_go_block = True
            elif m := _GO_SINGLE.match(line):
                refs.append(ImportRef("go", m.group(1)))
        elif family == "rust":
            if m := _RUST_MOD.match(line):
                refs.append(ImportRef("rust-mod", m.group(1)))
            elif m := _RUST_USE.match(line):
                refs.append(ImportRef("rust-use", m.group(1)))
        elif family == "java":
            if m := _JAVA.match(line):
                refs.append(ImportRef("java", m.group(1)))
        elif family == "c" and (m := _C_INCLUDE.match(line)):
            refs.append(ImportRef("c", m.group(1)))
    return refs


def _first_file(candidates: Iterable[Path]) -> Path | None:
    for cand in candidates:
        if cand.is_file():
            return cand
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def _py_module_file(base: Path, dotted: str) -> Path | None:
    rel = Path(*dotted.split(".")) if dotted else Path()
    return _first_file((base / rel.with_suffix(".py") if dotted else base / "__init__.py",
                        base / rel / "__init__.py", base / (str(rel) + ".pyi")))


def _resolve_py(ref: ImportRef, current: Path, root: Path) -> list[Path]:
    if ref.level:
        base = current.parent
        for _ in range(ref.level - 1):
            base = base.parent
        bases = [base]
    else:
        bases = [root, root / "src", current.parent]
    found: list[Path] = []
    for base in bases:
        # "from pkg import sub": sub may be a module of its own; a name that
        # is not comes from the package itself.
        subs = []
        for name in ref.names:
            sub_file = _py_module_file(base, f"{ref.target}.{name}" if ref.target else name)
            if sub_file is not None:
                subs.append(sub_file)
        module = None
        if ref.target or len(subs) < len(ref.names):
            module = _py_module_file(base, ref.target)
        found = ([module] if module is not None else []) + subs
        if found:
            break
    return found


def _resolve_js(ref: ImportRef, current: Path, root: Path) -> list[Path]:
    spec = ref.target
    base = (root / spec.lstrip("/")) if spec.startswith("/") else (current.parent / spec)
    cands = [base] if base.suffix in _JS_EXTS and base.suffix else []
    cands += [Path(str(base) + ext) for ext in _JS_EXTS]
    cands += [base / f"index{ext}" for ext in _JS_EXTS]
    hit = _first_file(cands)
    return [hit] if hit else []


def _go_module(root: Path) -> str | None:
    try:
        with open(root / "go.mod", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("module "):
                    return line.split()[1].strip()
    except OSError:
        return None
    return None


def _dir_files(folder: Path, ext: str, *, limit: int = 3) -> list[Path]:
    try:
        names = sorted(
            n for n in os.listdir(folder)
            if n.endswith(ext) and not n.endswith("_test.go") and not n.startswith(".")
        )
    except OSError:
        return []
    return [folder / n for n in names[:limit] if (folder / n).is_file()]


def _resolve_go(ref: ImportRef, current: Path, root: Path) -> list[Path]:
    module = _go_module(root)
    if not module or not (ref.target == module or ref.target.startswith(module + "/")):
        return []
    folder = root / ref.target[len(module):].lstrip("/")
    return _dir_files(folder, ".go")


def _rust_mod_dir(current: Path) -> Path:
    """Where ``mod x;`` in ``current`` looks for x."""
    if current.name in ("main.rs", "lib.rs", "mod.rs"):
        return current.parent
    return current.parent / current.stem


def _rust_crate_src(current: Path, root: Path) -> Path:
    for folder in (current.parent, *current.parents):
        has_root_file = (folder / "lib.rs").is_file() or (folder / "main.rs").is_file()
        if has_root_file and (folder.name == "src" or folder == root):
            return folder
        if folder == root:
            break
    return root / "src"


def _resolve_rust(ref: ImportRef, current: Path, root: Path) -> list[Path]:
    if ref.kind == "rust-mod":
        base = _rust_mod_dir(current)
        hit = _first_file((base / f"{ref.target}.rs", base / ref.target / "mod.rs"))
        return [hit] if hit else []
    parts = ref.target.split("::")
    head, rest = parts[0], parts[1:]
    if head == "crate":
        base = _rust_crate_src(current, root)
    elif head == "super":
        base = _rust_mod_dir(current).parent
    else:  # self
        base = _rust_mod_dir(current)
    # The longest prefix of the path that names a module file.
    for n in range(len(rest), 0, -1):
        rel = Path(*rest[:n])
        hit = _first_file((base / rel.with_suffix(".rs"), base / rel / "mod.rs"))
        if hit:
            return [hit]
    return []


def _java_source_root(current: Path, text: str) -> Path:
    m = re.search(r"^\s*package\s+([\w.]+)\s*;", text, re.MULTILINE)
    folder = current.parent
    if m:
        for _ in m.group(1).split("."):
            folder = folder.parent
    return folder


def _resolve_java(ref: ImportRef, source_root: Path, root: Path) -> list[Path]:
    parts = ref.target.split(".")
    roots = [source_root, root / "src" / "main" / "java", root / "src", root]
    for base in roots:
        if parts[-1] == "*":
            files = _dir_files(base / Path(*parts[:-1]), ".java")
            if files:
                return files
            continue
        # Nested classes: a.b.Outer.Inner lives in a/b/Outer.java.
        for n in range(len(parts), 1, -1):
            hit = _first_file((base / Path(*parts[:n]).with_suffix(".java"),))
            if hit:
                return [hit]
    return []


def _resolve_c(ref: ImportRef, current: Path, root: Path) -> list[Path]:
    hit = _first_file((current.parent / ref.target, root / ref.target,
                       root / "include" / ref.target))
    return [hit] if hit else []


def resolve_imports(text: str, current: Path, root: Path, family: str) -> list[tuple[Path, ImportRef]]:
    """Files under ``root`` that ``text`` (the content of ``current``) imports, in import order."""
    refs = parse_imports(text, family)
    source_root = _java_source_root(current, text) if family == "java" else root
    seen: set[Path] = set()
    out: list[tuple[Path, ImportRef]] = []
    for ref in refs:
        if ref.kind == "py":
            files = _resolve_py(ref, current, root)
        elif ref.kind == "js":
            files = _resolve_js(ref, current, root)
        elif ref.kind == "go":
            files = _resolve_go(ref, current, root)
        elif ref.kind.startswith("rust"):
            files = _resolve_rust(ref, current, root)
        elif ref.kind == "java":
            files = _resolve_java(ref, source_root, root)
        else:
            files = _resolve_c(ref, current, root)
        for file in files:
            try:
                key = file.resolve()
            except OSError:
                continue
            if key in seen or key == current.resolve() or not _inside(key, root):
                continue
            seen.add(key)
            out.append((key, ref))
    return out


# --------------------------------------------------------------------------- similarity


def identifiers(text: str) -> frozenset[str]:
    return frozenset(_IDENT.findall(text))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


@dataclass(frozen=True, slots=True)
class Chunk:
    path: str  # relative path shown to the model
    start_line: int
    text: str
    idents: frozenset[str]


def chunk_text(path: str, text: str, lines_per_chunk: int = CHUNK_LINES) -> list[Chunk]:
    """Non-overlapping chunks of whole lines; blank-only chunks are skipped."""
    lines = text.split("\n")
    chunks = []
    for start in range(0, len(lines), lines_per_chunk):
        body = "\n".join(lines[start : start + lines_per_chunk]).rstrip() + "\n"
        if body.strip():
            chunks.append(Chunk(path, start, body, identifiers(body)))
    return chunks


_OUTLINE = {
    "py": re.compile(r"^\s*(?:async\s+def|def|class)\s+\w+|^[A-Za-z_]\w*\s*(?::[^=]*)?=(?!=)"),
    "js": re.compile(
        r"^\s*(?:export\s+)?(?:default\s+)?(?:async\s+)?"
        r"(?:function\*?|class|const|let|var|interface|type|enum)\s+\w+"
        r"|^\s+(?:static\s+)?(?:async\s+)?(?!if\b|for\b|while\b|switch\b|catch\b)"
        r"\w+\s*\([^)]*\)\s*\{"
    ),
    "go": re.compile(r"^(?:func|type|var|const)\s"),
    "rust": re.compile(
        r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+)?"
        r"(?:fn|struct|enum|trait|type|const|static|impl)\b"
    ),
    "java": re.compile(
        r"^\s*(?:(?:public|protected|private|static|final|abstract|default|synchronized)\s+)*"
        r"(?:class|interface|enum|record|[\w<>\[\], ?]+\s+\w+\s*\()"
    ),
    "c": re.compile(r"^\s*#\s*define\s|^(?:typedef|struct|enum)\b|^\w[\w\s\*]*\([^;{]*\)\s*;"),
}
OUTLINE_MAX_LINES = 60


def outline_lines(text: str, family: str) -> list[str]:
    """The definition lines of a file (each cut to 160 characters)."""
    pattern = _OUTLINE.get(family)
    if pattern is None:
        return []
    return [line.rstrip()[:160] for line in text.split("\n") if pattern.match(line)]


def outline_chunk(
    path: str, text: str, family: str, names: frozenset[str] = frozenset()
) -> Chunk | None:
    """The file's definition lines only: a dense list of the names it offers.

    With ``names`` (what the current file imports from it or uses as
    ``module.name``) only the lines defining those names are kept: the
    signatures of exactly what the code at the cursor can call.
    """
    return _outline_from(path, outline_lines(text, family), names)


def _outline_from(path: str, lines: list[str], names: frozenset[str]) -> Chunk | None:
    if names:
        lines = [ln for ln in lines if _line_defines(ln, names)]
    lines = lines[:OUTLINE_MAX_LINES]
    if not lines:
        return None
    body = "\n".join(lines) + "\n"
    return Chunk(path, -1, body, identifiers(body))


_WORDS = re.compile(r"[A-Za-z_]\w*")


def _line_defines(line: str, names: frozenset[str]) -> bool:
    words = set(_WORDS.findall(line))
    hits = names & words
    return bool(hits) and _defines(Chunk("", 0, line, frozenset(words)), frozenset(hits))


def _focus(chunk: Chunk, names: frozenset[str]) -> Chunk:
    """Start a chunk at the first definition of one of ``names`` (budgets keep heads)."""
    lines = chunk.text.split("\n")
    if chunk.start_line < 0:
        # An outline: the wanted definitions first, then the rest in file order.
        first = [ln for ln in lines if ln and _defines(Chunk("", 0, ln, chunk.idents), names)]
        rest = [ln for ln in lines if ln and ln not in first]
        body = "\n".join(first + rest) + "\n"
        return Chunk(chunk.path, chunk.start_line, body, chunk.idents)
    for i, line in enumerate(lines):
        if i and any(n in line for n in names) and _defines(Chunk("", 0, line, chunk.idents), names):
            body = "\n".join(lines[i:])
            return Chunk(chunk.path, chunk.start_line + i, body, identifiers(body))
    return chunk


_DEF_RE_CACHE: dict[str, re.Pattern[str]] = {}


def _defines(chunk: Chunk, names: frozenset[str]) -> bool:
    """Does the chunk define (not merely use) one of ``names``?"""
    hits = names & chunk.idents
    for name in hits:
        pattern = _DEF_RE_CACHE.get(name)
        if pattern is None:
            if len(_DEF_RE_CACHE) > 4096:
                _DEF_RE_CACHE.clear()
            pattern = re.compile(
                r"^\s*(?:export\s+)?(?:pub\s+)?(?:async\s+)?"
                r"(?:def|class|function|const|let|var|fn|struct|enum|trait|type|interface|func)"
                rf"\s+\(?\*?\w*\)?\s*{re.escape(name)}\b|^{re.escape(name)}\s*[:=]",
                re.MULTILINE,
            )
            _DEF_RE_CACHE[name] = pattern
        if pattern.search(chunk.text):
            return True
    return False


# --------------------------------------------------------------------------- selection


def _uri_to_path(uri: str) -> Path | None:
    if not uri.startswith("file:"):
        return None
    return Path(unquote(urlparse(uri).path))


class _FileCache:
    """Chunks of files read from disk, keyed by path and invalidated by mtime/size."""

    def __init__(self, size: int = 128) -> None:
        self._items: OrderedDict[Path, tuple[tuple[int, int], list[Chunk]]] = OrderedDict()
        self._size = size

    def chunks(self, path: Path, rel: str, max_bytes: int) -> list[Chunk] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        if st.st_size > max_bytes:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._items.get(path)
        if hit and hit[0] == stamp:
            self._items.move_to_end(path)
            return hit[1]
        try:
            with open(path, "rb") as handle:
                raw = handle.read(min(max_bytes, READ_CAP_BYTES))
        except OSError:
            return None
        if not is_text(raw):
            return None
        chunks = chunk_text(rel, raw.decode("utf-8", errors="replace"))
        self._items[path] = (stamp, chunks)
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return chunks


class Neighbours:
    """Chooses cross-file snippets for a cursor; see the module docstring."""

    def __init__(self, *, time_budget: float = TIME_BUDGET_S) -> None:
        self.root: Path | None = None
        self.time_budget = time_budget
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._chosen: dict[tuple[str, int], tuple[float, tuple[Snippet, ...]]] = {}
        self._timed_out = False
        self._files = _FileCache()
        self._imports: dict[str, tuple[int, list[tuple[Path, ImportRef]]]] = {}
        self._doc_chunks: dict[str, tuple[int, int, list[Chunk]]] = {}
        self._attrs: dict[str, tuple[tuple[int, int], dict[str, frozenset[str]]]] = {}
        self._outline_lines: dict[tuple[str, Any], tuple[list[Chunk], list[str]]] = {}

    def touch(self, uri: str) -> None:
        """The document was opened or edited: it becomes the most recent one."""
        self._recent.pop(uri, None)
        self._recent[uri] = None
        while len(self._recent) > 64:
            self._recent.popitem(last=False)

    # -- main entry ------------------------------------------------------------
    def snippets_for(
        self, doc: Any, offset: int, *, documents: Any, settings: Any, root: Path | None
    ) -> tuple[Snippet, ...]:
        line = doc.text.count("\n", 0, offset)
        key = (doc.uri, line // BLOCK_LINES)
        now = time.monotonic()
        cached = self._chosen.get(key)
        if cached and now < cached[0]:
            return cached[1]
        self._timed_out = False
        result = self._select(doc, offset, documents=documents, settings=settings, root=root)
        if len(self._chosen) > 512:
            self._chosen.clear()
        # A selection cut short by the time box (cold file caches) is replaced
        # soon by a complete one; a complete one is kept for SELECTION_TTL.
        ttl = SHORT_TTL if self._timed_out else SELECTION_TTL
        self._chosen[key] = (now + ttl, result)
        return result

    def _select(
        self, doc: Any, offset: int, *, documents: Any, settings: Any, root: Path | None
    ) -> tuple[Snippet, ...]:
        deadline = time.perf_counter() + self.time_budget
        query_text = _around(doc.text, offset)
        query = identifiers(query_text)
        if not query:
            return ()
        current = _uri_to_path(doc.uri)
        scored: list[tuple[float, Chunk]] = []
        seen_paths: set[str] = set()

        def excluded(path: Path) -> bool:
            return is_excluded(path, settings.exclude, root=root,
                               respect_gitignore=settings.respect_gitignore)

        # 1. Files the current document imports (the editor's text when open).
        if current is not None and root is not None:
            for path, ref in self._imported(doc, current, root):
                if time.perf_counter() > deadline:
                    self._timed_out = True
                    break
                uri = path.as_uri()
                if uri in seen_paths or excluded(path):
                    continue
                seen_paths.add(uri)
                live = documents.get(uri)
                if live is not None and not live.is_text():
                    continue
                if live is not None:
                    chunks = self._live_chunks(uri, live, path, root)
                else:
                    chunks = self._files.chunks(path, _relative(path, root),
                                                settings.max_file_bytes) or []
                imported = frozenset(ref.names)
                used = imported | _attributes_used(self._attr_index(doc), path, ref)
                near = used & query
                outline = None
                if chunks:
                    outline = self._outline(path, live, chunks, root, used)
                for c in [*chunks, *([outline] if outline else [])]:
                    score = jaccard(query, c.idents) + IMPORT_BONUS
                    if c.start_line < 0:
                        score += OUTLINE_BONUS
                    if near and _defines(c, near):
                        # Defines a name used around the cursor: what the model needs.
                        score += DEFINES_BONUS
                        c = _focus(c, near)
                    elif imported and _defines(c, imported):
                        score += DEFINES_BONUS / 3
                        c = _focus(c, imported)
                    scored.append((score, c))

        # 2. Recently opened/edited documents (their live text).
        for uri, chunks in self._recent_chunks(doc, documents, settings, root, excluded):
            if time.perf_counter() > deadline:
                self._timed_out = True
                break
            if uri in seen_paths:
                continue
            seen_paths.add(uri)
            scored.extend((jaccard(query, c.idents), c) for c in chunks)

        return _pick(scored, query)

    # -- sources -----------------------------------------------------------------
    def _recent_chunks(
        self, doc: Any, documents: Any, settings: Any, root: Path | None, excluded: Any
    ) -> Iterator[tuple[str, list[Chunk]]]:
        taken = 0
        for uri in reversed(self._recent):
            if taken >= MAX_RECENT:
                return
            if uri == doc.uri:
                continue
            other = documents.get(uri)
            path = _uri_to_path(uri)
            if other is None or path is None:
                continue
            if len(other.text) > settings.max_file_bytes or excluded(path) or not other.is_text():
                continue
            taken += 1
            yield path.resolve().as_uri(), self._live_chunks(uri, other, path, root)

    def _live_chunks(self, uri: str, other: Any, path: Path, root: Path | None) -> list[Chunk]:
        """Chunks of an open document's text, cached per version."""
        cached = self._doc_chunks.get(uri)
        if cached and cached[0] == other.version and cached[1] == len(other.text):
            return cached[2]
        chunks = chunk_text(_relative(path, root), other.text[:READ_CAP_BYTES])
        if len(self._doc_chunks) > 128:
            self._doc_chunks.clear()
        self._doc_chunks[uri] = (other.version, len(other.text), chunks)
        return chunks

    def _attr_index(self, doc: Any) -> dict[str, frozenset[str]]:
        cached = self._attrs.get(doc.uri)
        if cached and cached[0] == (doc.version, len(doc.text)):
            return cached[1]
        index = attribute_index(doc.text)
        if len(self._attrs) > 64:
            self._attrs.clear()
        self._attrs[doc.uri] = ((doc.version, len(doc.text)), index)
        return index

    def _outline(
        self, path: Path, live: Any, chunks: list[Chunk], root: Path, names: frozenset[str]
    ) -> Chunk | None:
        """Outline of an imported file restricted to ``names``; definition lines cached."""
        # Disk files: the cached chunk list stands for one (mtime, size) version;
        # it is kept in the value so its id cannot be reused while cached.
        key = (str(path), id(chunks) if live is None else (live.version, len(live.text)))
        hit = self._outline_lines.get(key)
        if hit is None:
            text = live.text if live is not None else "".join(c.text for c in chunks)
            hit = (chunks, outline_lines(text, language_family("", path)))
            if len(self._outline_lines) > 256:
                self._outline_lines.clear()
            self._outline_lines[key] = hit
        return _outline_from(_relative(path, root), hit[1], names)

    def _imported(self, doc: Any, current: Path, root: Path) -> list[tuple[Path, ImportRef]]:
        """Resolved imports of the document, cached per version."""
        cached = self._imports.get(doc.uri)
        if cached and cached[0] == doc.version:
            return cached[1]
        family = language_family(getattr(doc, "language_id", "") or "", current)
        found = resolve_imports(doc.text, current, root, family) if family else []
        # Files next to the current one first: most likely project code.
        here = current.resolve().parent
        found = sorted(found, key=lambda pr: pr[0].parent != here)[:MAX_IMPORTS]
        if len(self._imports) > 256:
            self._imports.clear()
        self._imports[doc.uri] = (doc.version, found)
        return found


_ATTR = re.compile(r"\b([A-Za-z_]\w*)\.([A-Za-z_]\w*)")


def attribute_index(text: str) -> dict[str, frozenset[str]]:
    """``{name: {attr, ...}}`` for every ``name.attr`` in the text (first 200 kB)."""
    index: dict[str, set[str]] = {}
    for m in _ATTR.finditer(text, 0, 200_000):
        index.setdefault(m.group(1), set()).add(m.group(2))
    return {k: frozenset(v) for k, v in index.items()}


def _attributes_used(
    index: dict[str, frozenset[str]], path: Path, ref: ImportRef
) -> frozenset[str]:
    """Names the document uses as ``module.name`` when ``path`` is imported as a module."""
    alias = path.stem if path.stem != "__init__" else path.parent.name
    if alias and (alias in ref.names or ref.target.endswith(alias) or not ref.names):
        return index.get(alias, frozenset())
    return frozenset()


def _around(text: str, offset: int) -> str:
    """The lines around the cursor that the chunks are compared with."""
    start = offset
    for _ in range(QUERY_LINES_ABOVE):
        start = text.rfind("\n", 0, max(0, start - 1)) + 1
        if start == 0:
            break
    end = offset
    for _ in range(QUERY_LINES_BELOW):
        nxt = text.find("\n", end + 1)
        if nxt < 0:
            end = len(text)
            break
        end = nxt
    return text[start:end]


def _pick(scored: list[tuple[float, Chunk]], query: frozenset[str]) -> tuple[Snippet, ...]:
    """Best chunks (at most MAX_PER_FILE per file), best first."""
    per_file: dict[str, int] = {}
    chosen: list[Chunk] = []
    for score, chunk in sorted(scored, key=lambda sc: (-sc[0], sc[1].path, sc[1].start_line)):
        if len(chosen) >= MAX_SNIPPETS or score < MIN_SCORE:
            break
        if jaccard(query, chunk.idents) >= COPY_SCORE:
            continue  # a copy of the code at the cursor
        if per_file.get(chunk.path, 0) >= MAX_PER_FILE:
            continue
        per_file[chunk.path] = per_file.get(chunk.path, 0) + 1
        chosen.append(chunk)
    # Best first: the context builder keeps what fits in this order, then
    # renders the kept ones in path order.
    return tuple(Snippet(c.path, c.text) for c in chosen)


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except (ValueError, OSError):
            pass
    return path.name
