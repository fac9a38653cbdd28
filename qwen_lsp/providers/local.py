"""The embedded local engine: a llama.cpp server child bound to 127.0.0.1.

:class:`LocalEngine` owns one child process running ``llama_cpp.server`` (via
:mod:`qwen_lsp.providers.local_child`) on a random loopback port, protected by
a random API key. Callers ask :meth:`LocalEngine.ensure_started` for the base
URL and key before each request; it is cheap once the engine is ready, and
concurrent callers share a single start.

Lifecycle: ``stopped`` -> ``assembling`` (building the model file from the
installed part packages, first run only) -> ``starting`` (child loading the
model) -> ``ready``. If the child dies unexpectedly it is restarted once; a
second unexpected death, or a failed start, leaves the engine ``failed`` with
``last_error`` set until :meth:`stop` resets it.

The child is tied to this process by PR_SET_PDEATHSIG and a watchdog thread
(see local_child). Note that PDEATHSIG fires when the *thread* that spawned
the child ends, so the event loop that calls ``ensure_started`` should live
as long as the process (the language server's main loop does).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from qwen_lsp.prompt_cache import N_BATCH, STATE_CACHE_BYTES
from qwen_lsp.providers.local_child import KEY_ENV
from qwen_lsp.providers.local_model import (
    MODEL_FILENAME,
    LocalEngineError,
    ProgressCallback,
    ensure_model,
    model_cache_dir,
)

__all__ = ["LocalEngine", "LocalEngineError"]

READY_TIMEOUT_S = 120.0
_POLL_INTERVAL_S = 0.2
_STOP_GRACE_S = 3.0
_LOG_TAIL_BYTES = 4000
_LOG_MAX_BYTES = 5 * 1024 * 1024
_MAX_RESTARTS = 1

LogCallback = Callable[[str], None]


def default_threads() -> int:
    """CPUs this process may run on (falls back to os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalEngine:
    """Starts, watches and stops the local llama.cpp server child."""

    def __init__(
        self,
        *,
        model_path: str | None = None,
        threads: int | None = None,
        context_size: int = 4096,
        progress: ProgressCallback | None = None,
        log: LogCallback | None = None,
    ) -> None:
        self._explicit_model = model_path
        self._threads = threads if threads and threads > 0 else default_threads()
        self._context_size = context_size
        self._progress = progress
        self._log = log
        self._state = "stopped"
        self._last_error: str | None = None
        self._model: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._port: int | None = None
        self._key: str | None = None
        self._start_task: asyncio.Task[tuple[str, str]] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._unexpected_exits = 0
        self._stopping = False
        self._log_path = model_cache_dir().parent / "local-engine.log"
        _live_engines.add(self)

    # ------------------------------------------------------------------ info

    def runs_with(self, *, model_path: str | None, threads: int | None, context_size: int) -> bool:
        """True if these settings describe the engine as it was started."""
        wanted_threads = threads if threads and threads > 0 else default_threads()
        return (model_path or None) == (self._explicit_model or None) and (
            wanted_threads == self._threads and context_size == self._context_size
        )

    @property
    def state(self) -> str:
        return self._state

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def log_path(self) -> Path:
        return self._log_path

    def describe(self) -> dict[str, Any]:
        """State for status messages and logs. Never includes the key."""
        return {
            "state": self._state,
            "model_path": str(self._model or self._explicit_model or ""),
            "port": self._port,
            "pid": self.pid,
            "threads": self._threads,
            "context_size": self._context_size,
            "restarts": self._unexpected_exits,
            "last_error": self._last_error,
            "log_path": str(self._log_path),
        }

    def __repr__(self) -> str:
        return f"LocalEngine(state={self._state!r}, port={self._port}, pid={self.pid})"

    # ------------------------------------------------------------ lifecycle

    async def ensure_started(self) -> tuple[str, str]:
        """Return ``(base_url, api_key)`` of a ready engine, starting it if needed."""
        if self._state == "ready" and self.pid is not None and self._port and self._key:
            return self._base_url(self._port), self._key
        watcher = self._watch_task
        if self._state == "ready" and watcher is not None and not watcher.done():
            # The child just died and the watcher has not reacted yet: let it
            # decide (restart or fail) so that only one restart happens.
            await asyncio.shield(watcher)
            if self._state == "ready" and self.pid is not None and self._port and self._key:
                return self._base_url(self._port), self._key
        if self._state == "failed" and (self._start_task is None or self._start_task.done()):
            raise LocalEngineError(self._last_error or "local engine failed")
        if self._start_task is None or self._start_task.done():
            self._start_task = asyncio.get_running_loop().create_task(self._start())
        # shield: one caller being cancelled must not abort the shared start.
        return await asyncio.shield(self._start_task)

    async def stop(self) -> None:
        """Stop the child (terminate, then kill after 3 s) and reset the state."""
        self._stopping = True
        try:
            current = asyncio.current_task()
            for task in (self._start_task, self._watch_task):
                if task is not None and task is not current and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            await self._terminate_child()
        finally:
            self._start_task = None
            self._watch_task = None
            self._proc = None
            self._port = None
            self._key = None
            self._unexpected_exits = 0
            self._last_error = None
            self._state = "stopped"
            self._stopping = False

    async def _start(self) -> tuple[str, str]:
        try:
            model = await self._resolve_model()
            self._state = "starting"
            return await self._launch(model)
        except asyncio.CancelledError:
            await self._terminate_child()
            raise
        except LocalEngineError as exc:
            await self._terminate_child()
            self._fail(str(exc))
            raise
        except Exception as exc:  # anything else is a start failure too
            await self._terminate_child()
            message = self._scrub(f"local engine failed to start: {exc}")
            self._fail(message)
            raise LocalEngineError(message) from exc

    async def _resolve_model(self) -> Path:
        if self._model is not None:
            return self._model
        if self._explicit_model:
            path = Path(self._explicit_model).expanduser()
            if not path.is_file() or not os.access(path, os.R_OK):
                raise LocalEngineError(f"local model file {path} does not exist or is not readable")
            self._model = path
            return path
        self._state = "assembling"
        self._model = await asyncio.to_thread(ensure_model, self._thread_safe_progress())
        return self._model

    def _thread_safe_progress(self) -> ProgressCallback | None:
        """Deliver progress from the worker thread on the event loop's thread."""
        callback = self._progress
        if callback is None:
            return None
        loop = asyncio.get_running_loop()

        def forward(message: str, fraction: float | None) -> None:
            # Assembly is the first 80% of start-up; launching the engine ends it.
            scaled = None if fraction is None else 0.8 * fraction
            loop.call_soon_threadsafe(callback, message, scaled)

        return forward

    async def _launch(self, model: Path) -> tuple[str, str]:
        port = _free_loopback_port()
        key = secrets.token_urlsafe(32)
        self._port, self._key = port, key
        self._emit(f"starting local engine on 127.0.0.1:{port} with {model.name}")
        if self._progress is not None:
            self._progress("starting the local engine", 0.85)
        env = _child_environment(key)
        started = time.monotonic()
        log_offset, log_file = self._open_log(port)
        with log_file:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "qwen_lsp.providers.local_child",
                "--parent-pid",
                str(os.getpid()),
                "--",
                *self._server_args(model, port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                # Not the editor's project folder: `python -m` would put it on
                # the child's sys.path, and a project's own argparse.py or
                # ctypes.py would replace the standard library's in the engine.
                cwd=str(self._log_path.parent),
            )
        await self._wait_ready(self._proc, port, key, log_offset)
        self._state = "ready"
        self._last_error = None
        self._emit(f"local engine ready (pid {self._proc.pid}, {time.monotonic() - started:.1f} s)")
        if self._progress is not None:
            self._progress("local engine ready", 1.0)
        self._watch_task = asyncio.get_running_loop().create_task(self._watch(self._proc))
        return self._base_url(port), key

    def _server_args(self, model: Path, port: int) -> list[str]:
        threads = str(self._threads)
        return [
            "--model", str(model),
            "--model_alias", MODEL_FILENAME.removesuffix(".gguf"),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(self._context_size),
            "--n_threads", threads,
            "--n_threads_batch", threads,
            # Logits for the whole prompt are only needed for prompt logprobs;
            # skipping them saves memory and prompt time.
            "--logits_all", "false",
            # Do not pin ~0.5 GB of RAM for an editor helper.
            "--use_mlock", "false",
            # A superseded request (client closed the stream) stops generating.
            "--interrupt_requests", "true",
            "--n_batch", str(N_BATCH),
            # Save the state of every finished request and restore the one with
            # the longest common prefix: coming back to a place or a file does
            # not process its prompt again.
            "--cache", "true",
            "--cache_type", "ram",
            "--cache_size", str(STATE_CACHE_BYTES),
            # Per-request timings and cache hits go to the engine log (see
            # log_path): the record of what the engine reused and computed.
            "--verbose", "true",
        ]  # fmt: skip

    async def _wait_ready(
        self, proc: asyncio.subprocess.Process, port: int, key: str, log_offset: int
    ) -> None:
        """Poll ``GET /v1/models`` until it answers 200; fail fast if the child exits."""
        url = self._base_url(port) + "/models"
        headers = {"Authorization": f"Bearer {key}"}
        deadline = time.monotonic() + READY_TIMEOUT_S
        exited = asyncio.ensure_future(proc.wait())
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
                while True:
                    if proc.returncode is not None:
                        raise LocalEngineError(
                            f"local engine exited during start-up (code {proc.returncode}). "
                            f"Log {self._log_path}:\n{self._log_tail(log_offset)}"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        response = await client.get(url, headers=headers)
                        if response.status_code == 200:
                            return
                    if time.monotonic() > deadline:
                        raise LocalEngineError(
                            f"local engine did not become ready within "
                            f"{READY_TIMEOUT_S:.0f} s. "
                            f"Log {self._log_path}:\n{self._log_tail(log_offset)}"
                        )
                    # Sleep one poll interval, waking at once if the child exits.
                    await asyncio.wait({exited}, timeout=_POLL_INTERVAL_S)
        finally:
            exited.cancel()

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Restart the child once if it dies on its own; fail on the second death."""
        code = await proc.wait()
        if self._stopping or proc is not self._proc:
            return
        self._unexpected_exits += 1
        self._proc = None
        if self._unexpected_exits > _MAX_RESTARTS:
            self._fail(
                f"local engine exited unexpectedly again (code {code}); not restarting. "
                f"See {self._log_path}"
            )
            return
        self._emit(f"local engine exited unexpectedly (code {code}); restarting it")
        self._state = "starting"
        self._start_task = asyncio.get_running_loop().create_task(self._start())
        with contextlib.suppress(Exception):
            await asyncio.shield(self._start_task)

    async def _terminate_child(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), _STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def kill_now(self) -> None:
        """Synchronous last resort (atexit): SIGKILL the child if it still runs."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)

    # --------------------------------------------------------------- helpers

    @staticmethod
    def _base_url(port: int) -> str:
        return f"http://127.0.0.1:{port}/v1"

    def _fail(self, message: str) -> None:
        self._state = "failed"
        self._last_error = message
        self._emit(message)
        if self._progress is not None:
            self._progress("local engine failed to start", 1.0)

    def _emit(self, message: str) -> None:
        if self._log is not None:
            self._log(self._scrub(message))

    def _scrub(self, text: str) -> str:
        key = self._key
        return text.replace(key, "***") if key else text

    def _open_log(self, port: int) -> tuple[int, BinaryIO]:
        """Open the child's log for appending (afresh when it grew too large).

        Returns the offset where this start's output begins, for error tails.
        """
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self._log_path.stat().st_size > _LOG_MAX_BYTES:
                self._log_path.write_bytes(b"")
        handle = open(self._log_path, "ab")  # noqa: SIM115 - closed by the caller
        handle.write(f"\n=== qwen-lsp local engine start, port {port} ===\n".encode())
        handle.flush()
        return handle.tell(), handle

    def _log_tail(self, offset: int) -> str:
        try:
            with open(self._log_path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                end = handle.tell()
                handle.seek(max(offset, end - _LOG_TAIL_BYTES))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return self._scrub(text.strip()) or "(log is empty)"


def _child_environment(key: str) -> dict[str, str]:
    """Our environment, plus the key and an import path that finds qwen_lsp.

    The package may be run from a source tree rather than installed, so the
    directory that contains it is put first on the child's PYTHONPATH.
    """
    env = dict(os.environ)
    env[KEY_ENV] = key
    package_root = str(Path(__file__).resolve().parents[2])
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = package_root + (os.pathsep + existing if existing else "")
    return env


_live_engines: weakref.WeakSet[LocalEngine] = weakref.WeakSet()


@atexit.register
def _kill_children_at_exit() -> None:
    for engine in list(_live_engines):
        engine.kill_now()
