"""Cross-file context: import resolution per language, selection, exclusion, stability."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_lsp.documents import DocumentStore
from qwen_lsp.neighbours import (
    Neighbours,
    chunk_text,
    identifiers,
    jaccard,
    outline_chunk,
    parse_imports,
    resolve_imports,
)
from qwen_lsp.settings import Settings


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


# Each case: workspace files, the current file, its language family, and the
# workspace-relative files its imports must resolve to (in import order).
CASES = [
    pytest.param(
        {
            "pkg/__init__.py": "",
            "pkg/models.py": "class User: ...\n",
            "pkg/util/__init__.py": "",
            "pkg/util/text.py": "def slug(s): ...\n",
            "pkg/views.py": (
                "import os\nimport pkg.models\nfrom .util import text\n"
                "from .util.text import slug as s\nfrom . import models\nimport missing.mod\n"
            ),
        },
        "pkg/views.py", "py",
        ["pkg/models.py", "pkg/util/__init__.py", "pkg/util/text.py"],
        id="python",
    ),
    pytest.param(
        {
            "src/app/main.py": "from app.db import connect\n",
            "src/app/__init__.py": "",
            "src/app/db.py": "def connect(): ...\n",
        },
        "src/app/main.py", "py", ["src/app/db.py"], id="python-src-layout",
    ),
    pytest.param(
        {
            "web/api.ts": "export const get = 1;\n",
            "web/comp/index.tsx": "export default 1;\n",
            "web/lib/helpers.js": "module.exports = {};\n",
            "web/styles.css": "",
            "web/app.ts": (
                "import { get } from './api';\nimport Comp from \"./comp\";\n"
                "const h = require('./lib/helpers.js');\nimport React from 'react';\n"
                "export * from './api';\nconst lazy = import('./comp');\n"
            ),
        },
        "web/app.ts", "js", ["web/api.ts", "web/comp/index.tsx", "web/lib/helpers.js"],
        id="js-ts",
    ),
    pytest.param(
        {
            "go.mod": "module example.com/shop\n\ngo 1.22\n",
            "internal/cart/cart.go": "package cart\n",
            "internal/cart/cart_test.go": "package cart\n",
            "internal/cart/price.go": "package cart\n",
            "cmd/main.go": (
                'package main\n\nimport (\n\t"fmt"\n\tc "example.com/shop/internal/cart"\n)\n'
            ),
        },
        "cmd/main.go", "go", ["internal/cart/cart.go", "internal/cart/price.go"], id="go",
    ),
    pytest.param(
        {
            "Cargo.toml": "[package]\nname = \"x\"\n",
            "src/main.rs": "mod net;\nuse crate::model::user::User;\nuse std::io;\n",
            "src/net.rs": "pub fn get() {}\n",
            "src/model/mod.rs": "pub mod user;\n",
            "src/model/user.rs": "pub struct User;\n",
        },
        "src/main.rs", "rust", ["src/net.rs", "src/model/user.rs"], id="rust",
    ),
    pytest.param(
        {
            "src/model/mod.rs": "pub mod user;\nuse super::net::get;\n",
            "src/model/user.rs": "pub struct User;\n",
            "src/net.rs": "pub fn get() {}\n",
            "src/lib.rs": "mod model;\nmod net;\n",
        },
        "src/model/mod.rs", "rust", ["src/model/user.rs", "src/net.rs"], id="rust-mod-rs",
    ),
    pytest.param(
        {
            "src/main/java/com/acme/App.java": (
                "package com.acme;\n\nimport com.acme.util.Strings;\nimport java.util.List;\n"
                "import static com.acme.util.Strings.trim;\nimport com.acme.model.*;\n"
            ),
            "src/main/java/com/acme/util/Strings.java": "package com.acme.util;\n",
            "src/main/java/com/acme/model/Order.java": "package com.acme.model;\n",
        },
        "src/main/java/com/acme/App.java", "java",
        ["src/main/java/com/acme/util/Strings.java", "src/main/java/com/acme/model/Order.java"],
        id="java",
    ),
    pytest.param(
        {"src/a.c": '#include "a.h"\n#include <stdio.h>\n', "src/a.h": "int f(void);\n"},
        "src/a.c", "c", ["src/a.h"], id="c",
    ),
]


@pytest.mark.parametrize(("files", "current", "family", "expected"), CASES)
def test_resolve_imports(tmp_path: Path, files: dict[str, str], current: str, family: str,
                         expected: list[str]) -> None:
    write(tmp_path, files)
    cur = tmp_path / current
    found = resolve_imports(cur.read_text(), cur, tmp_path, family)
    rel = [p.relative_to(tmp_path.resolve()).as_posix() for p, _ in found]
    assert rel == expected


def test_imports_outside_the_workspace_are_not_used(tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("X = 1\n")
    root = tmp_path / "ws"
    write(root, {"pkg/a.py": "from .. import outside\nfrom ..outside import X\n"})
    cur = root / "pkg/a.py"
    assert resolve_imports(cur.read_text(), cur, root, "py") == []


def test_parse_imports_python_names() -> None:
    refs = parse_imports("from .a import (b,  # first\n    c as d)\nimport x.y as z, w\n", "py")
    assert [(r.target, r.names, r.level) for r in refs] == [
        ("a", ("b", "c"), 1), ("x.y", (), 0), ("w", (), 0)]


def test_similarity_helpers() -> None:
    a = identifiers("def parse_header(line): return line.split(':')")
    b = identifiers("header = parse_header(raw_line)")
    assert jaccard(a, a) == 1.0
    assert 0 < jaccard(a, b) < 1
    assert jaccard(a, frozenset()) == 0.0
    chunks = chunk_text("x.py", "\n".join(f"line_{i} = {i}" for i in range(100)), 40)
    assert [c.start_line for c in chunks] == [0, 40, 80]
    assert all(c.text.endswith("\n") for c in chunks)


# --------------------------------------------------------------------------- selection


def _workspace(tmp_path: Path) -> tuple[Path, DocumentStore, Neighbours]:
    root = tmp_path / "ws"
    filler = "\n".join(f"UNRELATED_{i} = {i}" for i in range(120)) + "\n"
    write(root, {
        "shop/__init__.py": "",
        "shop/pricing.py": filler + (
            "def apply_discount(price, percent):\n"
            "    return round(price * (1 - percent / 100), 2)\n"
        ) + filler,
        "shop/.env": "SECRET_TOKEN=abc\n",
        "shop/secrets.py": "def vault_lookup(name):\n    return name\n",
    })
    docs = DocumentStore()
    nb = Neighbours(time_budget=5.0)  # generous: no timing in unit tests
    nb.root = root
    return root, docs, nb


CART = (
    "from shop.pricing import apply_discount\nfrom shop import secrets\n\n\n"
    "def total(items, percent):\n"
    "    price = sum(item.price for item in items)\n"
    "    return \n"
)


def test_selects_the_imported_definition_and_never_excluded_files(tmp_path: Path) -> None:
    root, docs, nb = _workspace(tmp_path)
    env_doc = docs.open((root / "shop/.env").as_uri(), "SECRET_TOKEN=abc price percent\n", 1,
                        "dotenv")
    nb.touch(env_doc.uri)
    cart = docs.open((root / "shop/cart.py").as_uri(), CART, 1, "python")
    snippets = nb.snippets_for(cart, len(CART) - 1, documents=docs, settings=Settings(),
                               root=root)
    paths = [s.path for s in snippets]
    assert "shop/pricing.py" in paths
    assert any("def apply_discount" in s.text for s in snippets)
    joined = "".join(s.text for s in snippets)
    assert "SECRET_TOKEN" not in joined and "vault_lookup" not in joined
    assert all(not p.endswith((".env", "secrets.py")) for p in paths)


def test_recent_documents_are_candidates_and_copies_are_dropped(tmp_path: Path) -> None:
    root, docs, nb = _workspace(tmp_path)
    other = docs.open((root / "shop/report.py").as_uri(),
                      "def summary(items, percent):\n    price = sum(item.price for item in "
                      "items)\n    return format_total(price)\n", 1, "python")
    copy = docs.open((root / "shop/cart_copy.py").as_uri(), CART, 1, "python")
    nb.touch(other.uri)
    nb.touch(copy.uri)
    cart = docs.open((root / "shop/cart.py").as_uri(), CART, 1, "python")
    snippets = nb.snippets_for(cart, len(CART) - 1, documents=docs, settings=Settings(),
                               root=root)
    paths = [s.path for s in snippets]
    assert "shop/report.py" in paths
    assert "shop/cart_copy.py" not in paths  # a copy of the code at the cursor


def test_selection_is_stable_while_typing_in_one_place(tmp_path: Path) -> None:
    root, docs, nb = _workspace(tmp_path)
    cart = docs.open((root / "shop/cart.py").as_uri(), CART, 1, "python")
    first = nb.snippets_for(cart, len(CART) - 1, documents=docs, settings=Settings(), root=root)
    # A new recent file appears and the user types on: same block, same snippets.
    other = docs.open((root / "shop/report.py").as_uri(), "def total(items, percent): ...\n", 1,
                      "python")
    nb.touch(other.uri)
    cart.apply_full(CART[:-1] + "apply_\n", 2)
    again = nb.snippets_for(cart, len(cart.text) - 1, documents=docs, settings=Settings(),
                            root=root)
    assert again == first


def test_cross_file_off_for_excluded_pattern_setting(tmp_path: Path) -> None:
    root, docs, nb = _workspace(tmp_path)
    cart = docs.open((root / "shop/cart.py").as_uri(), CART, 1, "python")
    settings = Settings(exclude=("pricing.py",))
    snippets = nb.snippets_for(cart, len(CART) - 1, documents=docs, settings=settings, root=root)
    assert all(s.path != "shop/pricing.py" for s in snippets)


def test_zero_time_budget_returns_quickly_without_error(tmp_path: Path) -> None:
    root, docs, _ = _workspace(tmp_path)
    nb = Neighbours(time_budget=0.0)
    cart = docs.open((root / "shop/cart.py").as_uri(), CART, 1, "python")
    assert nb.snippets_for(cart, len(CART) - 1, documents=docs, settings=Settings(),
                           root=root) == ()


# --------------------------------------------------------------------------- outlines


def test_parse_imports_multiline_python_and_js_names() -> None:
    py = parse_imports("from .parse import (\n    urlparse, _splittag,  # x\n    quote as q,\n)\n",
                       "py")
    assert [(r.target, r.names, r.level) for r in py] == [
        ("parse", ("urlparse", "_splittag", "quote"), 1)]
    js = parse_imports("import Thing, { a, b as c } from './x';\nimport * as ns from './y'\n",
                       "js")
    assert [(r.target, r.names) for r in js] == [("./x", ("Thing", "a", "b")), ("./y", ())]


@pytest.mark.parametrize(
    ("family", "text", "names", "expected"),
    [
        ("py", ("import re\nLIMIT = 3\n\nclass Box:\n    def open(self):\n        x = 1\n"
                "def helper(a, b):\n    return a\n"), frozenset(),
         ["LIMIT = 3", "class Box:", "    def open(self):", "def helper(a, b):"]),
        ("py", "def a():\n    pass\ndef b(x):\n    pass\nB = 2\n", frozenset({"b", "B"}),
         ["def b(x):", "B = 2"]),
        ("js", ("export function get(url) {\n  return 1;\n}\nconst LIMIT = 3;\n"
                "class Api {\n  fetch(path) {\n    if (x) {\n    }\n  }\n}\n"), frozenset(),
         ["export function get(url) {", "const LIMIT = 3;", "class Api {", "  fetch(path) {"]),
        ("go", "package x\n\nfunc Get(u string) error {\n\treturn nil\n}\ntype T struct{}\n",
         frozenset(), ["func Get(u string) error {", "type T struct{}"]),
        ("rust", "pub fn get() -> u8 {\n    1\n}\nstruct S;\nimpl S {\n    pub fn new() {}\n}\n",
         frozenset(), ["pub fn get() -> u8 {", "struct S;", "impl S {", "    pub fn new() {}"]),
    ],
)
def test_outline(family: str, text: str, names: frozenset[str], expected: list[str]) -> None:
    chunk = outline_chunk("f", text, family, names)
    assert chunk is not None and chunk.text.split("\n")[:-1] == expected


def test_imported_signatures_are_offered_even_when_far_from_the_cursor(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    body = "\n".join(f"def filler_{i}(x):\n    return x + {i}\n" for i in range(80))
    write(root, {
        "pkg/__init__.py": "",
        "pkg/parse.py": body + "\ndef split_port(host):\n    return host.rpartition(':')\n",
    })
    text = ("from .parse import (\n    split_port,\n)\n\n\n"
            "def connect(url):\n    host = url.netloc\n    name, port = \n")
    docs = DocumentStore()
    nb = Neighbours(time_budget=5.0)
    doc = docs.open((root / "pkg/client.py").as_uri(), text, 1, "python")
    snippets = nb.snippets_for(doc, len(text) - 1, documents=docs, settings=Settings(),
                               root=root)
    assert any(s.text.startswith("def split_port(host):") for s in snippets)
