"""Background work for the local engine while the user reads or pauses.

One task runs *steps* (each a single short engine request) whenever nothing
else is happening: no editor request for ``idle_s`` and no stream open. A step
is either the suggestion for the state "as if the last one were accepted"
(so Tab, Tab, Tab is answered from the cache) or one chunk of prompt pre-fill
at the place where the user is (so the first suggestion there needs little
prompt processing). Every editor event pokes the task: it waits for the next
pause, so a real request never queues behind more than the one chunk already
sent.

This module only schedules; the server decides what a step does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("qwen_lsp")

# No editor activity for this long counts as a pause.
IDLE_S = 0.25
_POLL_S = 0.05


class Warmer:
    def __init__(
        self,
        step: Callable[[], Awaitable[bool]],
        *,
        engine_idle: Callable[[], bool],
        idle_s: float = IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._step = step
        self._engine_idle = engine_idle
        self.idle_s = idle_s
        self._clock = clock
        self._last_poke = float("-inf")
        self._urgent = False
        self._task: asyncio.Task[None] | None = None
        self.steps = 0

    def poke(self, *, now: bool = False) -> None:
        """Something happened in the editor: work again after the next pause.

        ``now``: the next step is worth running without waiting for a pause
        (the suggestion after one just shown: the user reads it, and a key
        typed meanwhile abandons the step like any other).
        """
        self._last_poke = self._clock()
        self._urgent = self._urgent or now
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._task = loop.create_task(self._run())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        try:
            while True:
                wait = self.idle_s - (self._clock() - self._last_poke)
                if wait > 0 and not self._urgent:
                    await asyncio.sleep(wait)
                    continue
                if not self._engine_idle():
                    await asyncio.sleep(_POLL_S)
                    continue
                poked = self._last_poke
                self._urgent = False
                if not await self._step():
                    if self._last_poke == poked:
                        return  # nothing left to do until the next poke
                    continue
                self.steps += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must never reach the editor
            log.exception("warm-up step failed")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
