"""Which window the local engine's warm-up pre-fills next at the user's place."""

from __future__ import annotations

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


def test_a_new_place_is_filled_smallest_window_first_then_larger_ones() -> None:
    server, view, _ = _server()
    sizes = []
    for _ in range(20):
        prompt = server._next_prefill()
        if prompt is None:
            break
        sizes.append(estimate_tokens(prompt))
        view.record(prompt, "", completed=True, first_token_s=None)
    assert len(sizes) == len(candidate_budgets(server.settings.context_tokens))
    assert sizes == sorted(sizes), sizes


def test_a_place_with_a_large_window_ready_grows_it_and_skips_the_smaller_ones() -> None:
    server, view, offset = _server()
    budgets = candidate_budgets(server.settings.context_tokens)  # largest first
    view.record(_window(server, offset, budgets[1]), "", completed=True, first_token_s=None)
    prompt = server._next_prefill()
    assert prompt == _window(server, offset, budgets[0])  # only the full window is left
    view.record(prompt, "", completed=True, first_token_s=None)
    assert server._next_prefill() is None
