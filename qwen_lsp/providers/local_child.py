"""Entry point of the local engine's child process.

Usage (by :mod:`qwen_lsp.providers.local` only)::

    python -m qwen_lsp.providers.local_child --parent-pid PID -- <llama server args>

Before handing control to ``llama_cpp.server`` in this same process, it makes
sure the child can never outlive the language server:

* on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` has the kernel kill us the
  moment the parent goes away;
* a watchdog thread checks every half second that our parent is still the
  expected pid (covers other platforms and the race where the parent died
  before prctl ran) and exits hard otherwise.

The API key arrives in an environment variable rather than on the command
line (so ``ps`` never shows it) and is appended to ``sys.argv`` here. Variables
that llama_cpp.server would read as settings (``HOST``, ``PORT``,
``CONFIG_FILE``, ``MODEL`` ...) are removed so the user's environment cannot
change what we asked for, e.g. make the server listen on all interfaces.
It also keeps ggml away from Intel AMX where that is risky (see
:func:`_want_extra_buffer_types`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import runpy
import signal
import sys
import threading
import time

KEY_ENV = "QWEN_LSP_LOCAL_ENGINE_KEY"
EXTRA_BUFTS_ENV = "QWEN_LSP_LOCAL_EXTRA_BUFTS"
_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.5


def _set_parent_death_signal() -> None:
    """Ask the Linux kernel to SIGKILL us when our parent thread exits."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the watchdog below still covers us


def _parent_alive(parent_pid: int) -> bool:
    if os.getppid() != parent_pid:
        return False  # re-parented: the original parent is gone
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watchdog(parent_pid: int) -> None:
    while True:
        if not _parent_alive(parent_pid):
            os._exit(0)
        time.sleep(_POLL_SECONDS)


def _scrub_settings_environment() -> None:
    """Drop environment variables that llama_cpp.server would take as settings."""
    names = {"HOST", "PORT", "CONFIG_FILE"}
    try:
        from llama_cpp.server.settings import Settings

        names.update(field.upper() for field in Settings.model_fields)
    except ImportError:
        pass
    for variable in list(os.environ):
        if variable.upper() in names:
            del os.environ[variable]


def _amx_advertised() -> bool:
    """True when /proc/cpuinfo lists Intel AMX tiles."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return any(line.startswith("flags") and "amx_tile" in line for line in handle)
    except OSError:
        return False


def _want_extra_buffer_types() -> bool:
    """Whether ggml may use its extra weight buffer types (AMX, repacking).

    Builds made with ``-march=native`` on an AMX-capable CPU route matrix
    products through AMX tiles. Some virtual machines advertise AMX yet fault
    on the first tile instruction (seen on a Firecracker guest: SIGSEGV in
    ``ggml_backend_amx_mul_mat``), so we stay off them whenever AMX is listed.
    ``QWEN_LSP_LOCAL_EXTRA_BUFTS=1`` / ``=0`` overrides the guess.
    """
    override = os.environ.get(EXTRA_BUFTS_ENV, "").strip()
    if override in {"0", "1"}:
        return override == "1"
    return not _amx_advertised()


def _disable_extra_buffer_types() -> None:
    """Make every model load with ``use_extra_bufts = False``.

    llama_cpp.server has no option for it, so the default-params factory that
    ``Llama`` calls is wrapped before the server module is run.
    """
    try:
        import llama_cpp.llama_cpp as bindings
    except ImportError:
        return
    factory = bindings.llama_model_default_params
    if not hasattr(factory(), "use_extra_bufts"):
        return

    def without_extra_bufts() -> object:
        params = factory()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = without_extra_bufts


def _count_whole_states() -> None:
    """Make the RAM state cache count what each state really holds.

    llama-cpp-python's LlamaRAMCache limits the llama.cpp state bytes only,
    but every saved state also carries a copy of the logits rows and token
    ids, which for small prompts is most of its memory: a cache limited to
    1 GiB could hold tens of GB. The cache class the server instantiates is
    replaced with one that counts all three.
    """
    try:
        import llama_cpp
    except ImportError:
        return
    base = llama_cpp.LlamaRAMCache

    class HonestRAMCache(base):  # type: ignore[misc, valid-type]
        @property
        def cache_size(self) -> int:
            return sum(
                int(state.llama_state_size) + int(state.scores.nbytes)
                + int(state.input_ids.nbytes)
                for state in self.cache_state.values()
            )

        def __setitem__(self, key, value) -> None:  # type: ignore[no-untyped-def]
            # Keep the logits of the last token only. After a restore the
            # engine evaluates the last prompt token again before it samples,
            # so the other rows (up to n_batch x 151,936 floats, 39 MB at
            # n_batch 64) are never read; without them a state is its KV cells.
            scores = getattr(value, "scores", None)
            if scores is not None and getattr(scores, "ndim", 0) == 2 and len(scores) > 1:
                value.scores = scores[-1:].copy()
            # A saved state whose tokens start the new one restores nothing the
            # new one would not: drop it (pre-fill saves one per chunk).
            key = tuple(key)
            for old in [k for k in self.cache_state if len(k) <= len(key) and
                        key[: len(k)] == k]:
                del self.cache_state[old]
            super().__setitem__(key, value)

    llama_cpp.LlamaRAMCache = HonestRAMCache


def _parse(argv: list[str]) -> tuple[int, list[str]]:
    """Split ``--parent-pid PID -- server args``."""
    if len(argv) < 3 or argv[0] != "--parent-pid" or argv[2] != "--":
        raise SystemExit("usage: local_child --parent-pid PID -- <llama_cpp.server args>")
    return int(argv[1]), argv[3:]


def main(argv: list[str] | None = None) -> None:
    parent_pid, server_args = _parse(list(sys.argv[1:] if argv is None else argv))
    _set_parent_death_signal()
    if not _parent_alive(parent_pid):
        os._exit(0)
    threading.Thread(
        target=_watchdog, args=(parent_pid,), name="parent-watchdog", daemon=True
    ).start()

    key = os.environ.pop(KEY_ENV, None)
    _scrub_settings_environment()
    if key:
        # One token: a random key may start with "-", which argparse would
        # take for an option if it stood alone.
        server_args = [*server_args, f"--api_key={key}"]
    if not _want_extra_buffer_types():
        _disable_extra_buffer_types()
    _count_whole_states()
    sys.argv = ["llama_cpp.server", *server_args]
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
