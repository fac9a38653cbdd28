"""Telling the user: throttled messages, log lines, status and progress.

A failing upstream would otherwise raise the same error on every keystroke.
``window/showMessage`` goes out at most once per kind of problem per
``interval`` seconds; every occurrence still goes to ``window/logMessage``.
A ``qwen/status`` notification carries the state an editor can display:
``"error"`` while the upstream fails, ``"paused"`` while completions are held
back (rate limit, breaker, token budget), ``"warning"`` while the settings have a
problem, ``"ok"`` once none holds (``"starting"`` while a local engine starts).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from lsprotocol import types

from qwen_lsp.providers.base import UpstreamError

log = logging.getLogger("qwen_lsp")

SHOW_INTERVAL = 300.0
# A time-out interrupts nobody: it is logged and shown in the status. Only
# this many in a row (no answer in between) make the one message per session.
PERSISTENT_TIMEOUTS = 3

_FIXES = {
    "auth": "Check DASHSCOPE_API_KEY (or qwen.apiKey) and that the key was issued for the "
    "region in qwen.region: Singapore (intl) and Beijing (cn) keys differ.",
    "not_found": "Check qwen.model; the model may not exist in this region or for this API.",
    "rate_limited": "Completions pause until the limit resets; they resume by themselves.",
    "connect": "Check the network and qwen.baseUrl / qwen.region. Completions resume by "
    "themselves when the upstream is reachable.",
    "timeout": "The upstream is slow; raise qwen.timeoutMs or choose a faster model.",
    "server": "The upstream reported a server error; completions resume by themselves.",
    "protocol": "The upstream sent a response qwen-lsp could not read; check qwen.baseUrl.",
    "bad_request": "The upstream rejected the request; check qwen.model, qwen.mode and "
    "qwen.maxTokens.",
}


class Notifier:
    def __init__(
        self,
        ls: Any,
        *,
        interval: float = SHOW_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ls = ls
        self._interval = interval
        self._clock = clock
        self._last_shown: dict[str, float] = {}
        self._unhealthy = False
        self._timeouts = 0  # in a row
        self._timeout_shown = False  # once per session
        self._last_paused = ""
        self._upstream = ("error", "")  # the status while the upstream is unwell
        self._settings_message: str | None = None
        self._progress_token: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- plumbing ----------------------------------------------------------------
    def _send(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the server's loop, from any thread; never raise."""
        loop = self._loop
        if loop is None:
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is not None and threading.current_thread() is not threading.main_thread():
            loop.call_soon_threadsafe(self._guard, fn)
        else:
            self._guard(fn)

    @staticmethod
    def _guard(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - e.g. the transport is already closed
            log.debug("notification dropped: %s", type(exc).__name__)

    def log(self, level: types.MessageType, message: str) -> None:
        self._send(lambda: self._ls.window_log_message(
            types.LogMessageParams(type=level, message=message)))

    def show_once(self, kind: str, level: types.MessageType, message: str) -> bool:
        now = self._clock()
        last = self._last_shown.get(kind)
        self.log(level, message)
        if last is not None and now - last < self._interval:
            return False
        self._last_shown[kind] = now
        self._send(lambda: self._ls.window_show_message(
            types.ShowMessageParams(type=level, message=f"qwen-lsp: {message}")))
        return True

    def status(self, state: str, message: str) -> None:
        self._send(lambda: self._ls.protocol.notify(
            "qwen/status", {"state": state, "message": message}))

    def _publish(self) -> None:
        """Send the state the two sources of trouble add up to."""
        if self._unhealthy:
            self.status(*self._upstream)
        elif self._settings_message is not None:
            self.status("warning", self._settings_message)
        else:
            self.status("ok", "completions available")

    # -- events ------------------------------------------------------------------
    def problems(self, problems: list[str]) -> None:
        """The problems of the settings as now read; an empty list clears the warning."""
        text = "settings: " + " | ".join(problems) if problems else None
        if text is not None:
            self.show_once("settings:" + text, types.MessageType.Warning, text)
        elif self._settings_message is not None:
            self.log(types.MessageType.Info, "settings: the problems reported earlier are gone")
        if text != self._settings_message:
            self._settings_message = text
            self._publish()

    def timeout(self, message: str) -> None:
        """A completion ran out of its time box (with or without a partial answer)."""
        self._timeouts += 1
        self.log(types.MessageType.Warning, message)
        self._unhealthy = True  # until a completion succeeds again
        self._upstream = ("error", message)
        self._publish()
        if self._timeouts >= PERSISTENT_TIMEOUTS and not self._timeout_shown:
            self._timeout_shown = True
            fix = _FIXES["timeout"]
            self._send(lambda: self._ls.window_show_message(types.ShowMessageParams(
                type=types.MessageType.Warning,
                message=f"qwen-lsp: {self._timeouts} completions in a row timed out; "
                f"the last: {message} {fix}")))

    def upstream_error(self, err: UpstreamError) -> None:
        if err.kind == "timeout":
            self.timeout(err.message)
            return
        fix = _FIXES.get(err.kind, "")
        # Providers already name the fix for some errors ("Check the API key…").
        message = err.message if "Check " in err.message or not fix else f"{err.message} {fix}"
        level = types.MessageType.Warning if err.kind in {
            "rate_limited", "timeout", "server", "connect", "protocol"
        } else types.MessageType.Error
        self.show_once(f"upstream:{err.kind}", level, message)
        self._unhealthy = True
        self._upstream = ("error", message)
        self._publish()

    def paused(self, message: str) -> None:
        """Completions are held back (rate limit, breaker, token budget): say
        why in the status, once per change of the text (at most once a second
        while a countdown runs), never as a message per keystroke."""
        if not message or message == self._last_paused:
            return
        self._last_paused = message
        self._unhealthy = True
        self._upstream = ("paused", message)
        self._publish()

    def upstream_ok(self) -> None:
        self._timeouts = 0
        self._last_paused = ""
        if self._unhealthy:
            self._unhealthy = False
            self.log(types.MessageType.Info, "upstream is healthy again")
            self._publish()

    def engine_progress(self, message: str, fraction: float | None) -> None:
        """Local engine start-up: work-done progress in the editor."""
        def send() -> None:
            ls = self._ls
            wdp = ls.work_done_progress
            if self._progress_token is None:
                self._progress_token = f"qwen-lsp-{uuid.uuid4()}"
                token = self._progress_token
                wdp.create(token)
                wdp.begin(token, types.WorkDoneProgressBegin(
                    title="qwen-lsp local engine", message=message, percentage=0))
            token = self._progress_token
            if fraction is not None and fraction >= 1.0:
                wdp.end(token, types.WorkDoneProgressEnd(message=message))
                self._progress_token = None
            else:
                pct = None if fraction is None else int(fraction * 100)
                wdp.report(token, types.WorkDoneProgressReport(message=message, percentage=pct))
            ls.window_log_message(types.LogMessageParams(type=types.MessageType.Log,
                                                         message=f"local engine: {message}"))
        self._send(send)
        self.status("starting" if (fraction or 0) < 1.0 else "ok", message)
