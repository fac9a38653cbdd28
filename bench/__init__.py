"""Benchmarks of qwen-lsp (run as ``python -m bench.<name>``)."""
