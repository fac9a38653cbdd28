"""The CLI's progress lines on stderr: a handful, not one per 2 % of the work."""

from __future__ import annotations

import io

from qwen_lsp.cli import ProgressLines


def test_progress_is_a_line_per_message_and_per_quarter_of_the_work() -> None:
    out = io.StringIO()
    progress = ProgressLines(out)
    for i in range(51):  # the model's assembly reports about every 2 %
        progress("Assembling local model", i / 50 * 0.8)
    progress("Local model ready", 0.8)
    progress("starting the local engine", 0.85)
    progress("starting the local engine", 0.9)  # same message, same quarter
    progress("local engine ready", 1.0)
    lines = out.getvalue().splitlines()
    assert lines == [
        "qwen-lsp:   0% Assembling local model",
        "qwen-lsp:  25% Assembling local model",
        "qwen-lsp:  51% Assembling local model",
        "qwen-lsp:  75% Assembling local model",
        "qwen-lsp:  80% Local model ready",
        "qwen-lsp:  85% starting the local engine",
        "qwen-lsp: 100% local engine ready",
    ]


def test_a_message_without_a_fraction_is_printed_once() -> None:
    out = io.StringIO()
    progress = ProgressLines(out)
    progress("waiting for the engine", None)
    progress("waiting for the engine", None)
    assert out.getvalue() == "qwen-lsp: waiting for the engine\n"
