"""The engine child's RAM state cache (llama-cpp-python's class, as local_child adjusts it).

No model: the states are built by hand with the shapes the engine saves.
The real model restoring such a state is in tests/integration.
"""

from __future__ import annotations

import pytest

llama_cpp = pytest.importorskip("llama_cpp")
np = pytest.importorskip("numpy")

from qwen_lsp.providers import local_child

VOCAB = 1000


def state(tokens: list[int], rows: int, kv_bytes: int) -> object:
    scores = np.arange(rows * VOCAB, dtype=np.single).reshape(rows, VOCAB)
    return llama_cpp.LlamaState(
        input_ids=np.array(tokens, dtype=np.intc), scores=scores, n_tokens=len(tokens),
        llama_state=b"\0" * kv_bytes, llama_state_size=kv_bytes, seed=1)


@pytest.fixture
def cache_class():
    saved = llama_cpp.LlamaRAMCache
    local_child._count_whole_states()
    try:
        yield llama_cpp.LlamaRAMCache
    finally:
        llama_cpp.LlamaRAMCache = saved


def test_a_saved_state_keeps_the_last_logits_row_and_is_counted_whole(cache_class) -> None:
    cache = cache_class(capacity_bytes=1 << 30)
    s = state(list(range(100)), rows=64, kv_bytes=5000)
    last = s.scores[-1].copy()
    cache[list(range(100))] = s
    kept = cache[list(range(100))]
    assert kept.scores.shape == (1, VOCAB) and (kept.scores[0] == last).all()
    assert cache.cache_size == 5000 + VOCAB * 4 + 100 * np.dtype(np.intc).itemsize


def test_states_a_newer_one_extends_are_dropped_and_capacity_holds(cache_class) -> None:
    one = 20_000 + VOCAB * 4 + 10 * np.dtype(np.intc).itemsize
    cache = cache_class(capacity_bytes=2 * one + 10)
    cache[[1, 2, 3]] = state([1, 2, 3], rows=3, kv_bytes=20_000)
    cache[[1, 2, 3, 4]] = state([1, 2, 3, 4], rows=4, kv_bytes=20_000)
    assert len(cache.cache_state) == 1  # the first one starts the second
    for k in range(3):
        tokens = [50 + k] * 10
        cache[tokens] = state(tokens, rows=10, kv_bytes=20_000)
    assert cache.cache_size <= 2 * one + 10 and len(cache.cache_state) == 2
