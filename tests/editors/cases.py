"""Documents, fake model answers and the exact text each editor must end up with.

Every case has non-ASCII text (accented letters and an emoji outside the
Basic Multilingual Plane, so UTF-8, UTF-16 and UTF-32 columns all differ)
before the cursor, which sits at the end of ``line`` (0-based).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    before: str  # document text when completion is requested
    line: int  # 0-based line; the cursor is at its end
    # What the fake model answers. The editor tests send it as one stream chunk:
    # token by token, a loaded machine can pass the engine's early-answer point
    # (EARLY_ANSWER_S) after the first line, and the editor then rightly shows
    # only the lines complete so far; these tests are about the editor's insert.
    reply: str
    after: str  # exact document text once the editor has applied the item


CASES = [
    Case(
        name="single-line",
        before='def greet(name):\n    msg = "héllo 🌍 " + \n    return msg\n',
        line=1,
        reply="name.title()",
        after='def greet(name):\n    msg = "héllo 🌍 " + name.title()\n    return msg\n',
    ),
    Case(
        name="single-line-after-word",
        before='def greet(name):\n    out = "wörld 🌍 " + na\n    return out\n',
        line=1,
        reply="me.upper()",
        after='def greet(name):\n    out = "wörld 🌍 " + name.upper()\n    return out\n',
    ),
    Case(
        name="multi-line",
        before='def greet(names):\n    for n in ["héllo", "wörld 🌍"]:\n\n',
        line=1,
        reply="\n        print(n)\n        names.append(n)",
        after=(
            'def greet(names):\n    for n in ["héllo", "wörld 🌍"]:\n'
            "        print(n)\n        names.append(n)\n\n"
        ),
    ),
]

IDS = [c.name for c in CASES]


def end_of_line_utf16(case: Case) -> int:
    """The cursor column in UTF-16 code units (what VS Code and eglot 1.9 send)."""
    return len(case.before.split("\n")[case.line].encode("utf-16-le")) // 2
