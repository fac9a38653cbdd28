"""Which window the local engine's warm-up pre-fills next at the user's place."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from qwen_lsp.context import estimate_tokens
from qwen_lsp.prompt_cache import EngineView, candidate_budgets
from qwen_lsp.prompts import fim_prompt
from qwen_lsp.server import QwenServer

URI = "file:///work/proj/big.py"
TEXT = "".join(f"def f_{i}(x):\n    return x * {i} + compute(x, {i})\n\n" for i in range(400))


def _server() -> tuple[QwenServer, EngineView, int]:
    server = QwenServer()
    view = EngineView(1 << 30)
    view.tokens_per_s = 10_000.0  # one chunk holds a whole window: fewer steps to follow
    # The engine itself is outside this test: only the view is read.
    server.engine = SimpleNamespace(view=view)  # type: ignore[assignment]
    server.documents.open(URI, TEXT, 1, "python")
    offset = TEXT.index("def f_200")
    server.place = (URI, offset)
    return server, view, offset


def _window(server: QwenServer, offset: int, budget: int) -> str:
    doc = server.documents.get(URI)
    assert doc is not None
    return fim_prompt(server._context(doc, doc.text, offset, (), manual=False, tokens=budget))


def test_a_new_place_is_filled_with_the_window_a_request_takes_then_larger_ones() -> None:
    server, view, offset = _server()
    view.tokens_per_s = 300.0  # a second buys a few hundred tokens, a chunk about 90
    doc = server.documents.get(URI)
    assert doc is not None
    first = fim_prompt(server._context(doc, doc.text, offset, (), manual=False))
    assert estimate_tokens(first) < 400  # the window one second of prompt processing buys
    chunks = []
    for _ in range(10):
        prompt = server._next_prefill()
        assert prompt is not None
        chunks.append(prompt)
        view.record(prompt, "", completed=True, first_token_s=None, answered=False)
        if prompt == first:
            break
    assert chunks[-1] == first and len(chunks) > 1  # in chunks, each extending the last
    assert all(b.startswith(a) for a, b in itertools.pairwise(chunks))
    filled = [first]
    for _ in range(80):  # then growth: each larger window, smallest first
        prompt = server._next_prefill()
        if prompt is None:
            break
        view.record(prompt, "", completed=True, first_token_s=None, answered=False)
        if prompt.startswith(filled[-1]):
            filled[-1] = prompt  # the next chunk of the same window
        else:
            filled.append(prompt)
    sizes = [estimate_tokens(p) for p in filled]
    assert sizes == sorted(sizes) and len(sizes) >= 3, sizes
    assert max(sizes) > 1000  # up to the full budget


def test_at_the_end_of_a_line_the_prompt_after_enter_is_filled() -> None:
    server, view, offset = _server()
    doc = server.documents.get(URI)
    assert doc is not None
    end = TEXT.index("\n", offset)  # the end of "def f_200(x):"
    server.place = (URI, end)
    entered = TEXT[:end] + "\n    " + TEXT[end:]
    want = fim_prompt(server._context(doc, entered, end + 5, (), manual=False))
    assert server._next_prefill() == want  # one chunk: the view is fast
    # Mid-line there is no Enter to foresee: the prompt at the cursor.
    server.place = (URI, end - 3)
    view.forget()
    assert server._next_prefill() == fim_prompt(
        server._context(doc, TEXT, end - 3, (), manual=False))


def test_a_place_with_a_large_window_ready_grows_it_and_skips_the_smaller_ones() -> None:
    server, view, offset = _server()
    budgets = candidate_budgets(server.settings.context_tokens)  # largest first
    view.record(_window(server, offset, budgets[1]), "", completed=True, first_token_s=None)
    prompt = server._next_prefill()
    assert prompt == _window(server, offset, budgets[0])  # only the full window is left
    view.record(prompt, "", completed=True, first_token_s=None)
    assert server._next_prefill() is None
