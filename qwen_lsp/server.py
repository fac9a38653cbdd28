"""The pygls language server: thin handlers between LSP and the engine.

Handlers convert LSP positions to offsets (in the negotiated encoding), build
the completion context, ask the engine, and shape the answer for the client.
They never block the event loop and never raise into the editor: every
request gets an answer, an empty one when there is nothing useful to say.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import re
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.protocol.json_rpc import RPCRequest

from qwen_lsp import __version__
from qwen_lsp.backend import Backend
from qwen_lsp.context import (
    CHARS_PER_TOKEN,
    CompletionContext,
    Snippet,
    after_enter,
    build_context,
    detect_indent_unit,
    skip_reason,
)
from qwen_lsp.context_cache import keep_window_start
from qwen_lsp.documents import (
    UTF8,
    UTF16,
    UTF32,
    Document,
    DocumentStore,
    PositionError,
)
from qwen_lsp.exclude import is_excluded
from qwen_lsp.notify import Notifier
from qwen_lsp.pricing import price_for
from qwen_lsp.prompt_cache import (
    STATE_CACHE_BYTES,
    EngineView,
    WindowStarts,
    candidate_budgets,
    fit_context,
)
from qwen_lsp.prompts import fim_prompt
from qwen_lsp.providers.base import UpstreamError
from qwen_lsp.settings import Settings, load_settings
from qwen_lsp.speed_memory import load_speed, save_speed
from qwen_lsp.warmup import Warmer

# Answering `initialize` needs none of these: they are imported once the
# session is set up (see QwenServer.finish_initialize and _preload).
if TYPE_CHECKING:
    from qwen_lsp.engine import Engine, EngineConfig, Timing
    from qwen_lsp.items import ClientProfile
    from qwen_lsp.neighbours import Neighbours
    from qwen_lsp.postprocess import Suggestion

log = logging.getLogger("qwen_lsp")

TYPING_BURST_S = 1.0
TRIGGER_CHARACTERS = [".", "(", "[", "{", ",", ":", "=", " ", "\n", "\t", ">", '"', "'"]
_WORD_TAIL = re.compile(r"\w+$")
# One pre-fill chunk: what a real request may have to wait for behind it.
PREFILL_CHUNK_S = 0.3
# A cursor this far past the end of a suggestion shown still counts as being
# there (Enter and an indent after accepting it): its prefetch is kept.
AHEAD_SLACK_CHARS = 80
# The local engine's windows get other files' snippets from this budget up.
CROSS_FILE_MIN_TOKENS = 1024
# Start-up measurement of the local engine's prompt speed, when no file is open yet.
_CALIBRATION = "".join(
    f"def step_{i}(values, scale={i}):\n    return [v * scale + {i} for v in values]\n\n"
    for i in range(12))
# A start-up request whose document moved on while it was answered is
# answered again for the current text, at most this many times.
STARTUP_RETRIES = 3
_COMPLETION_METHODS = (types.TEXT_DOCUMENT_COMPLETION, types.TEXT_DOCUMENT_INLINE_COMPLETION)
_ENCODINGS = {
    types.PositionEncodingKind.Utf8: UTF8,
    types.PositionEncodingKind.Utf16: UTF16,
    types.PositionEncodingKind.Utf32: UTF32,
}


@dataclass(frozen=True, slots=True)
class _Anchor:
    """A completion position pinned to one text of its document.

    Taken when the request arrives, before the edits queued behind it are
    applied, so that it can be carried over to the text that is current when
    the handler runs (Document.map_offset).
    """

    doc: Document | None
    text: str
    edits: int  # doc.edit_count for ``text``
    offset: int | None  # None: the position is not in ``text``
    seq: int  # the request's number among this document's completion requests


_ARRIVAL: contextvars.ContextVar[_Anchor | None] = contextvars.ContextVar(
    "qwen_arrival", default=None)


class QwenProtocol(LanguageServerProtocol):
    """Keeps documents in our own store instead of pygls' workspace copy."""

    _server: QwenServer

    def _handle_request(self, msg_id: Any, method_name: str, params: Any) -> None:
        # Runs in the request's own context, which its handler task copies.
        if method_name in _COMPLETION_METHODS:
            try:
                _ARRIVAL.set(self._server.anchor(params.text_document.uri, params.position))
            except Exception:  # noqa: BLE001 - odd params: the handler answers without one
                _ARRIVAL.set(None)
        super()._handle_request(msg_id, method_name, params)

    def structure_message(self, data: dict[str, Any]) -> Any:
        msg_id = data.get("id")
        is_request = "method" in data and isinstance(msg_id, (int, str))
        try:
            message = super().structure_message(data)
        except JsonRpcException as exc:
            # pygls drops a request whose params do not parse, which leaves the
            # editor waiting forever: answer it with the error (InvalidParams).
            if is_request:
                self._send_response(msg_id, None, exc.to_response_error())
            raise
        if is_request and not isinstance(message, RPCRequest):
            # A notification method sent with an id: pygls would run it as the
            # notification it is and never answer, so the client would wait
            # forever. It still runs (a didChange must not be lost); the
            # answer is a null result.
            self._send_response(msg_id, None)
        return message

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(
        self, params: types.DidOpenTextDocumentParams
    ) -> Generator[Any, Any, None]:
        td = params.text_document
        self._server.documents.open(td.uri, td.text, td.version, td.language_id)
        self._server.on_document_touched(td.uri)
        self._server.user_at(td.uri, 0)  # editors open a file at its top
        yield from ()

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(
        self, params: types.DidChangeTextDocumentParams
    ) -> Generator[Any, Any, None]:
        self._server.apply_changes(params)
        yield from ()

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(
        self, params: types.DidCloseTextDocumentParams
    ) -> Generator[Any, Any, None]:
        uri = params.text_document.uri
        self._server.documents.close(uri)
        self._server._files.pop(uri, None)
        self._server._request_seq.pop(uri, None)
        self._server.last_completion.pop(uri, None)
        self._server._starts.forget(uri)
        if self._server.engine is not None:
            self._server.engine.forget(uri)
        yield from ()


class QwenServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__(
            "qwen-lsp",
            __version__,
            protocol_cls=QwenProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.documents = DocumentStore()
        self.settings: Settings
        self.settings, self.problems = load_settings(env=os.environ)
        self.init_options: dict[str, Any] | None = None
        self.workspace_config: dict[str, Any] | None = None
        self.encoding = UTF16
        self.profile: ClientProfile | None = None
        self._init_params: types.InitializeParams | None = None
        self.root: Path | None = None
        self.notifier = Notifier(self)
        self.engine: Engine | None = None
        self.backend = Backend(
            self.settings,
            progress=self.notifier.engine_progress,
            log=lambda m: self.notifier.log(types.MessageType.Log, m),
        )
        self._neighbours: Neighbours | None = None
        self._desynced: set[str] = set()
        self._request_seq: dict[str, int] = {}
        # Until one completion request has been answered for a document that
        # held still, requests are answered for the current text even when
        # edits queued at start-up move the document under them.
        self.starting_up = True
        self._files: dict[str, tuple[str, bool]] = {}
        self.last_completion: dict[str, float] = {}
        # The local engine: our copy of its prompt cache, the place the user
        # is at (uri, offset), and the background warm-up there.
        self.view = EngineView(STATE_CACHE_BYTES)
        # The speed measured in an earlier session on this machine, until this
        # one has measured its own: the first window at a new place fits it.
        self.view.tokens_per_s = load_speed() or self.view.tokens_per_s
        self._speed_saved_at = 0  # view.samples when the speed was last written
        self.place: tuple[str, int] | None = None
        self._prefetch: tuple[str, int, str, int, Suggestion, tuple[Snippet, ...]] | None = None
        # The suggestion shown last, which the warm-up computes ahead from:
        # (uri, start offset, end offset, text).
        self._ahead: tuple[str, int, int, str] | None = None
        self._starts = WindowStarts()
        self.warmer = Warmer(self._warm_step, engine_idle=self._engine_idle)
        # Set once the first workspace/configuration answer is in (or known
        # not to come), so the first completion uses the user's settings.
        self.config_ready = asyncio.Event()
        # Problems are judged only on the settings the user really has: after
        # initializationOptions and the first workspace/configuration answer
        # (or once it is known not to come). Before that, a backend set only
        # in the editor's settings would look missing.
        self.settings_read = False

    @property
    def neighbours(self) -> Neighbours:
        if self._neighbours is None:
            from qwen_lsp.neighbours import Neighbours

            self._neighbours = Neighbours()
            self._neighbours.root = self.root
        return self._neighbours

    def finish_initialize(self) -> None:
        """What ``initialize`` leaves for ``initialized``: client profile, engine."""
        from qwen_lsp.items import client_profile

        params = self._init_params
        self.profile = client_profile(params.client_info if params else None,
                                      params.capabilities if params else None)
        self.reload_settings()

    def report_server_error(self, error: Exception, source: Any) -> None:
        # pygls pops up "Error in server" for every malformed message a client
        # sends; that belongs in the log, not in front of the user.
        name = getattr(source, "__name__", str(source))
        self.notifier.log(types.MessageType.Error,
                          f"{name}: {type(error).__name__}: {str(error)[:300]}")

    # -- settings ----------------------------------------------------------------
    def reload_settings(self) -> None:
        settings, problems = load_settings(
            init_options=self.init_options, workspace=self.workspace_config, env=os.environ
        )
        changed_backend = (
            self.engine is None
            or _backend_key(settings) != _backend_key(self.settings)
            or settings.enabled and not self.settings.enabled  # warm the engine up now
        )
        if self.engine is not None and settings != self.settings:
            # Cached suggestions came from the old model, prompt or sampling
            # settings; none of them may outlive the change.
            self.engine.cache.clear()
        self.settings = settings
        self.backend.settings = settings
        self._files.clear()
        self.problems = problems
        if self.settings_read:
            self.notifier.problems(problems)
        config = self._engine_config(settings)
        if self.engine is None:
            from qwen_lsp.engine import Engine

            self.engine = Engine(
                config,
                self.backend.provider,
                on_error=self._upstream_error,
                on_success=self.notifier.upstream_ok,
                on_timeout=lambda ms: self.notifier.timeout(
                    f"a completion was cut off at the {ms} ms time box (qwen.timeoutMs)"),
                on_paused=self.notifier.paused,
            )
        else:
            self.engine.config = config
        self.engine.view = self.view if self._budgeted(settings) else None
        if changed_backend:
            asyncio.get_event_loop().create_task(self._switch_backend())
        logging.getLogger("qwen_lsp").setLevel(settings.log_level.upper())

    async def _switch_backend(self) -> None:
        """New backend settings: drop the old client (and a local engine that no
        longer matches), then, once the session is set up, start the new local
        engine in the background as at start-up."""
        await self.backend.reset_provider()
        if self.backend.local_engine is None:
            self.view.forget()  # a new engine starts with an empty cache
        s = self.settings
        if self.config_ready.is_set() and s.provider == "local" and s.enabled:
            await _warm_local(self)

    def _upstream_error(self, err: UpstreamError) -> None:
        self.notifier.upstream_error(err)
        if self.engine is not None:
            # "rate-limited, retrying in 4 s" rather than only the error.
            self.notifier.paused(self.engine.health.message())

    def _engine_config(self, s: Settings) -> EngineConfig:
        from qwen_lsp.engine import EngineConfig

        extra = self.backend.extra_body()
        return EngineConfig(
            mode=s.effective_mode(),
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            stop=tuple(s.stop),
            timeout_ms=s.time_box_ms(),
            debounce_ms=s.debounce_ms,
            debounce_min_ms=s.debounce_min_ms,
            debounce_max_ms=s.debounce_max_ms,
            extra_body=extra,
            context_cache=s.context_cache_mode(),
            price=price_for(s.model, s.prices) if s.provider != "local" else None,
            max_tokens_per_minute=s.max_tokens_per_minute or None,
            next_line=s.upstream_is_local(),
            second_tries=s.provider == "local",
        )

    def _remember_speed(self, *, final: bool = False) -> None:
        """Write the measured engine speed every few samples, and at the end."""
        view = self.view
        if view.measured and view.samples >= self._speed_saved_at + (1 if final else 8):
            self._speed_saved_at = view.samples
            save_speed(view.tokens_per_s)

    async def aclose(self) -> None:
        self._remember_speed(final=True)
        await self.warmer.aclose()
        if self.engine is not None:
            await self.engine.aclose()
        await self.backend.aclose()

    # -- documents ---------------------------------------------------------------
    def on_document_touched(self, uri: str) -> None:
        self.neighbours.touch(uri)

    def apply_changes(self, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        doc = self.documents.get(uri)
        if doc is None:
            self.notifier.log(types.MessageType.Warning, f"didChange for unknown document {uri}")
            return
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                try:
                    doc.apply_incremental(
                        (change.range.start.line, change.range.start.character),
                        (change.range.end.line, change.range.end.character),
                        change.text,
                        self.encoding,
                    )
                except PositionError as exc:
                    # We cannot know what the client did with an impossible
                    # edit; stop completing there until it sends full text.
                    self._desynced.add(uri)
                    self.notifier.log(
                        types.MessageType.Warning, f"rejected edit in {uri}: {exc}"
                    )
            else:
                doc.apply_full(change.text, None)
                self._desynced.discard(uri)
        doc.version = params.text_document.version
        self.neighbours.touch(uri)
        last = params.content_changes[-1] if params.content_changes else None
        if isinstance(last, types.TextDocumentContentChangePartial):
            try:
                at = doc.offset_at(last.range.start.line, last.range.start.character,
                                   self.encoding, strict=False)
            except PositionError:
                return
            ahead = self._ahead
            if (ahead is not None and ahead[0] == uri and at == ahead[1] and len(last.text) > 1
                    and ahead[3].startswith(last.text) and self.engine is not None):
                self.engine.note_accept(uri)  # the suggestion shown there, or a word of it
            self.user_at(uri, at + len(last.text))

    # -- completion ----------------------------------------------------------------
    def anchor(self, uri: str, position: types.Position) -> _Anchor:
        """Pin a completion request that has just arrived to its document's text."""
        seq = self._request_seq[uri] = self._request_seq.get(uri, 0) + 1
        doc = self.documents.get(uri)
        if doc is None:
            return _Anchor(None, "", 0, None, seq)
        try:
            offset: int | None = doc.offset_at(position.line, position.character,
                                               self.encoding, strict=True)
        except PositionError:
            offset = None
        return _Anchor(doc, doc.text, doc.edit_count, offset, seq)

    def held_still(self, uri: str) -> bool:
        """The request being answered was made for the document's text as it is now."""
        anchor = _ARRIVAL.get()
        doc = self.documents.get(uri)
        return (anchor is not None and doc is not None and anchor.doc is doc
                and doc.edit_count == anchor.edits)

    async def suggest(
        self, uri: str, position: types.Position, *, manual: bool
    ) -> tuple[Document, Any, int, Timing] | None:
        """The suggestion at ``position``, or None; records server overhead."""
        anchor = _ARRIVAL.get()
        if not self.config_ready.is_set():
            try:
                await asyncio.wait_for(self.config_ready.wait(), 3.0)
            except TimeoutError:
                self.config_ready.set()
        if self.engine is None and self._init_params is not None:
            self.finish_initialize()  # a client that never sent `initialized`
        from qwen_lsp.engine import Timing

        timing = Timing()
        found = None
        try:
            for _ in range(STARTUP_RETRIES + 1):
                found, moved = await self._suggest(uri, position, anchor, manual, timing)
                # Normally a result for a text the editor has already changed is
                # dropped: the editor asks again. Keys typed while the server was
                # starting may not be asked for again, so then the request is
                # answered for the text as it is now, unless a newer one came.
                if (found is not None or moved is None or not self.starting_up
                        or self._request_seq.get(uri) != moved.seq):
                    break
                anchor = moved
            return found
        finally:
            # Answered requests are recorded by finish(), after item shaping.
            if found is None and self.engine is not None:
                self.engine.stats.record_overhead(timing.busy)

    async def _suggest(
        self, uri: str, position: types.Position, anchor: _Anchor | None, manual: bool,
        timing: Timing,
    ) -> tuple[tuple[Document, Any, int, Timing] | None, _Anchor | None]:
        """(answer or None, the anchor it used when the document moved meanwhile)."""

        t = time.perf_counter()
        doc = self.documents.get(uri)
        if doc is None or uri in self._desynced or self.engine is None:
            timing.add(t)
            return None, None
        if anchor is not None and anchor.doc is doc:
            if anchor.offset is None:
                timing.add(t)
                return None, None
            # Edits that arrived after the request: carry its position over.
            offset = doc.map_offset(anchor.offset, anchor.edits, anchor.text)
        else:
            try:
                offset = doc.offset_at(position.line, position.character, self.encoding,
                                       strict=True)
            except PositionError:
                timing.add(t)
                return None, None
        used = _Anchor(doc, doc.text, doc.edit_count, offset,
                       anchor.seq if anchor is not None else self._request_seq.get(uri, 0))
        s = self.settings
        if not s.enabled or doc.language_id in s.disabled_languages:
            timing.add(t)
            return None, None
        _rel, excluded = self._file_info(uri)
        if excluded or doc.larger_than(s.max_file_bytes) or not doc.is_text():
            timing.add(t)
            return None, None
        self.user_at(uri, offset)
        snippets = self._snippets(doc, offset)
        ctx = self._context(doc, doc.text, offset, snippets, manual=manual)
        self._sent(uri, doc.text, ctx)
        cfg = self.engine.config
        if cfg.mode == "partial" and cfg.context_cache != "implicit":
            ctx = keep_window_start(ctx, doc.text, self.engine.explicit_cache.window_start(uri))
        if skip_reason(ctx, untitled=not uri.startswith("file:")) is not None:
            self.engine.stats.skipped += 1
            timing.add(t)
            return None, None
        t = timing.add(t)

        def current() -> bool:
            return self.documents.get(uri) is doc and doc.edit_count == used.edits

        try:
            suggestion = await self.engine.complete(ctx, is_current=current, timing=timing)
        except UpstreamError as exc:  # pragma: no cover - engine reports its own errors
            self.notifier.upstream_error(exc)
            return None, None
        if not current():
            return None, used
        if self._request_seq.get(uri) == used.seq:
            self.starting_up = False  # answered for a document that held still
        if suggestion is None:
            return None, None
        if self.engine.view is not None:
            # Tab, Tab, Tab: compute what comes after this one while the user reads it.
            self._prefetch = (uri, doc.version, doc.text, offset, suggestion, tuple(snippets))
            self._ahead = (uri, offset, offset + len(suggestion.text), suggestion.text)
            self.warmer.poke(now=True)
        return (doc, suggestion, offset, timing), None

    # -- prompt budget and warm-up (local engine) ------------------------------------
    @staticmethod
    def _budgeted(s: Settings) -> bool:
        """The engine-aware budget applies to the local engine's FIM prompts."""
        return s.provider == "local" and s.effective_mode() == "fim" and s.adaptive_budget

    def _snippets(self, doc: Document, offset: int) -> tuple[Snippet, ...]:
        s = self.settings
        if not s.cross_file:
            return ()
        return tuple(self.neighbours.snippets_for(
            doc, offset, documents=self.documents, settings=s, root=self.root))

    def _context(self, doc: Document, text: str, offset: int, snippets: tuple[Snippet, ...],
                 *, manual: bool, tokens: int | None = None) -> CompletionContext:
        """The completion context at ``offset``; for the local engine, the window
        :func:`~qwen_lsp.prompt_cache.pick_budget` chooses from what the engine has
        computed (``tokens``: that budget's window), starting where an earlier
        window started when that is only a little above its own start."""
        s = self.settings
        rel, _ = self._file_info(doc.uri)
        view = self.engine.view if self.engine is not None else None

        def build(budget: int, window_start: int | None = None) -> CompletionContext:
            # Other files' snippets open the prompt, and which ones are chosen
            # moves with the cursor and with the files open: in the engine's
            # small windows they would cost every place its cache (and get a
            # few dozen tokens there). They go into the large windows only.
            shared = snippets if view is None or budget >= CROSS_FILE_MIN_TOKENS else ()
            return build_context(
                text, offset, uri=doc.uri, path=rel, language=doc.language_id,
                version=doc.version, context_tokens=budget, multiline_setting=s.multiline,
                snippets=shared, repo_name=self.root.name if self.root else "",
                manual=manual, max_output_tokens=s.max_tokens,
                context_window=s.context_size if s.provider == "local" else None,
                window_start=window_start,
            )

        if view is None:
            return build(tokens or s.context_tokens)

        def sticky(budget: int) -> CompletionContext:
            # A window that starts where one the engine computed started, a
            # few lines above this budget's own start: its prompt is mostly
            # cached (a line or two below a place, after Enter, on a revisit).
            ctx = build(budget)
            start = self._starts.near(doc.uri, text, ctx.offset - len(ctx.prefix),
                                      len(ctx.prefix) // 2)
            return ctx if start is None else build(budget, start)

        if tokens is not None:
            return sticky(tokens)
        return fit_context(sticky, view, s.context_tokens)

    def _sent(self, uri: str, text: str, ctx: CompletionContext) -> None:
        """``ctx`` goes to the local engine: later windows nearby may start where it starts."""
        if self.engine is not None and self.engine.view is not None:
            self._starts.remember(uri, text, ctx.offset - len(ctx.prefix))

    def user_at(self, uri: str, offset: int) -> None:
        """The user is at this place (open, edit, cursor move, request)."""
        self.place = (uri, offset)
        if self.engine is not None and self.engine.view is not None and self.settings.enabled:
            self._remember_speed()
            ahead = self._ahead
            if ahead is not None and not (
                    ahead[0] == uri and ahead[1] <= offset <= ahead[2] + AHEAD_SLACK_CHARS):
                # Gone elsewhere before Tab: the suggestion computed ahead is not
                # needed, and the warm-up here must not wait behind it.
                self._ahead = self._prefetch = None
                self.engine.drop_prefetches()
            self.warmer.poke()

    def _engine_idle(self) -> bool:
        engine = self.backend.local_engine
        return (self.engine is not None and self.engine.idle and engine is not None
                and engine.state == "ready")

    async def _warm_step(self) -> bool:
        """One short piece of background work for the local engine; False: none left."""
        engine = self.engine
        if engine is None or engine.view is None or not self.settings.enabled:
            return False
        job, self._prefetch = self._prefetch, None
        if job is not None:
            await self._prefetch_accepted(*job)
            return True
        prompt = self._next_prefill()
        if prompt is None:
            return False
        return await engine.prefill(prompt)

    async def _prefetch_accepted(self, uri: str, version: int, text: str, offset: int,
                                 suggestion: Suggestion, snippets: tuple[Snippet, ...]) -> None:
        """The suggestion after ``suggestion``, for the text as if it were accepted:
        while the user still reads it, or once they have accepted it as it was."""
        doc = self.documents.get(uri)
        if doc is None or self.engine is None:
            return
        accepted = (text[:offset] + suggestion.text
                    + text[offset + suggestion.replace_suffix_chars:])
        if doc.version != version and doc.text != accepted:
            return  # the user went another way
        ctx = self._context(doc, accepted, offset + len(suggestion.text), snippets, manual=False)
        if skip_reason(ctx, untitled=not uri.startswith("file:")) is not None:
            return
        self._sent(uri, accepted, ctx)
        self.engine.stats.prefetches += 1
        await self.engine.complete(ctx, prefetch=True)

    def _next_prefill(self) -> str | None:
        """The next chunk of prompt to pre-fill at the user's place.

        First the prompt a request there would be sent now (the window
        :func:`fit_context` picks), so that the request costs only what was
        typed since. At the end of a finished line that is the prompt after
        Enter (with the editor's indentation): what a user there does next,
        and a prompt whose suffix differs from the one at the cursor (Enter on
        a revisit recomputed it: 50-70 tokens, a quarter of a second).

        Then the windows larger than the largest one the engine has ready
        there, smallest first: a pause grows the window the place already has
        instead of computing a smaller one that no request would take. The
        code typed in the cursor's block goes after ``<|fim_middle|>`` (see
        context.py), so what the user types there only appends to it.
        """
        if self.place is None or self.engine is None or self.engine.view is None:
            return None
        uri, offset = self.place
        doc = self.documents.get(uri)
        s = self.settings
        if doc is None or uri in self._desynced or doc.language_id in s.disabled_languages:
            return None
        if self._file_info(uri)[1] or doc.larger_than(s.max_file_bytes):
            return None
        offset = min(offset, len(doc.text))
        view = self.engine.view
        text = doc.text
        entered = after_enter(text, offset, detect_indent_unit(
            text[max(0, offset - 4000): offset + 1000]))
        if entered is not None:
            text, offset = entered
        snippets = self._snippets(doc, offset)
        chunk_chars = int(max(16, view.budget_tokens(PREFILL_CHUNK_S)) * CHARS_PER_TOKEN)

        def chunk(ctx: CompletionContext, prompt: str, cached: int) -> str:
            self._sent(uri, text, ctx)
            end = cached + chunk_chars
            if end >= len(prompt):
                return prompt
            nl = prompt.find("\n", end)
            return prompt if nl < 0 else prompt[: nl + 1]

        ctx = self._context(doc, text, offset, snippets, manual=False)
        prompt = fim_prompt(ctx)
        cached = view.cost(prompt).cached_chars
        if len(prompt) - cached >= 2 * CHARS_PER_TOKEN:
            return chunk(ctx, prompt, cached)
        todo: list[tuple[CompletionContext, str, int]] = []
        for budget in candidate_budgets(s.context_tokens):  # largest first
            ctx = self._context(doc, text, offset, snippets, manual=False, tokens=budget)
            prompt = fim_prompt(ctx)
            cached = view.cost(prompt).cached_chars
            if len(prompt) - cached < 2 * CHARS_PER_TOKEN:
                break  # ready: smaller windows are not needed here
            todo.append((ctx, prompt, cached))
        if not todo:
            return None
        return chunk(*todo[-1])

    def _file_info(self, uri: str) -> tuple[str, bool]:
        """(path shown to the model, excluded?) per URI, computed once per settings."""
        info = self._files.get(uri)
        if info is None:
            s = self.settings
            path = _uri_path(uri)
            rel = self._relative(path) if path else _display_name(uri)
            excluded = bool(path) and is_excluded(
                path, s.exclude, root=self.root, respect_gitignore=s.respect_gitignore
            )
            info = self._files[uri] = (rel, excluded)
        return info

    def _relative(self, path: str) -> str:
        if self.root:
            try:
                return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
            except (ValueError, OSError):
                pass
        return Path(path).name

    def finish(self, timing: Timing, t: float) -> None:
        timing.add(t)
        if self.engine is not None:
            self.engine.stats.record_overhead(timing.busy)


def _backend_key(s: Settings) -> tuple[Any, ...]:
    return (s.provider, s.api, s.resolved_base_url(), s.api_key, s.model, s.model_path,
            s.threads, s.context_size, s.timeout_ms, s.connect_timeout_ms)


def _uri_path(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return unquote(parsed.path)


def _display_name(uri: str) -> str:
    tail = uri.rsplit("/", 1)[-1]
    return unquote(tail) or "untitled"


def create_server() -> QwenServer:
    ls = QwenServer()

    @ls.feature(types.INITIALIZE)
    def on_initialize(ls: QwenServer, params: types.InitializeParams) -> None:
        opts = params.initialization_options
        ls.init_options = opts if isinstance(opts, dict) else None
        enc = ls.workspace.position_encoding
        ls.encoding = _ENCODINGS.get(enc, UTF16)  # type: ignore[arg-type]
        ls._init_params = params
        root = params.root_uri or (
            params.workspace_folders[0].uri if params.workspace_folders else None
        )
        if root and (p := _uri_path(root)):
            ls.root = Path(p)
        elif params.root_path:
            ls.root = Path(params.root_path)
        if ls._neighbours is not None:
            ls._neighbours.root = ls.root
        # The engine, the HTTP stack and settings problems wait for
        # `initialized`: the client gets its answer sooner.

    @ls.feature(types.INITIALIZED)
    async def on_initialized(ls: QwenServer, params: types.InitializedParams) -> None:
        try:
            ls.finish_initialize()
            await _pull_configuration(ls)
        finally:
            ls.config_ready.set()
            # A missing backend is one of the problems (NO_BACKEND_MESSAGE).
            ls.settings_read = True
            ls.notifier.problems(ls.problems)
        if ls.settings.provider == "local" and ls.settings.enabled:
            # Start the embedded engine now so the first keystroke doesn't wait.
            asyncio.get_running_loop().create_task(_warm_local(ls))
        # The first completion should not wait for imports either.
        asyncio.get_running_loop().create_task(asyncio.to_thread(_preload))

    @ls.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def on_config(ls: QwenServer, params: types.DidChangeConfigurationParams) -> None:
        if not await _pull_configuration(ls):
            data = params.settings
            if isinstance(data, dict):
                ls.workspace_config = data.get("qwen", data) if isinstance(
                    data.get("qwen", data), dict) else None
                ls.reload_settings()

    @ls.feature(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions()
    )
    async def on_inline(
        ls: QwenServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList | None:
        manual = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        if params.context.selected_completion_info is not None and not manual:
            return None  # the user is choosing from the completion menu
        uri = params.text_document.uri
        found = await ls.suggest(uri, params.position, manual=manual)
        if found is None:
            # "Nothing here" is an empty list: Neovim 0.12 keeps showing its
            # last item until a list replaces it, while null (the text moved
            # on since the request, or an unknown document) leaves it alone.
            return types.InlineCompletionList(items=[]) if ls.held_still(uri) else None
        doc, suggestion, offset, timing = found
        t = time.perf_counter()
        cursor = types.Position(*doc.position_at(offset, ls.encoding))
        end = types.Position(*doc.position_at(offset + suggestion.replace_suffix_chars,
                                              ls.encoding))
        from qwen_lsp.items import inline_items

        result = inline_items(suggestion, cursor, end)
        ls.finish(timing, t)
        return result

    @ls.feature(
        types.TEXT_DOCUMENT_COMPLETION,
        types.CompletionOptions(trigger_characters=TRIGGER_CHARACTERS, resolve_provider=False),
    )
    async def on_completion(
        ls: QwenServer, params: types.CompletionParams
    ) -> types.CompletionList | None:
        ctx = params.context
        uri = params.text_document.uri
        # "Invoked" also covers completion while typing an identifier (Helix
        # sends it on every word character): it counts as an explicit request
        # only outside a burst of typing.
        now = time.monotonic()
        last = ls.last_completion.get(uri)
        ls.last_completion[uri] = now
        invoked = ctx is None or ctx.trigger_kind == types.CompletionTriggerKind.Invoked
        manual = invoked and (last is None or now - last > TYPING_BURST_S)
        found = await ls.suggest(uri, params.position, manual=manual)
        if found is None:
            return types.CompletionList(is_incomplete=True, items=[])
        doc, suggestion, offset, timing = found
        t = time.perf_counter()
        from qwen_lsp.postprocess import is_closing_run

        replaced = doc.text[offset:offset + suggestion.replace_suffix_chars]
        if replaced and not is_closing_run(replaced):
            # A rewrite of the code right of the cursor. Neovim's omnifunc was
            # seen to insert such an item without removing that code (the line
            # then held both): the menu gets none; ghost text and the CLI do.
            ls.finish(timing, t)
            return types.CompletionList(is_incomplete=True, items=[])
        line_start = doc.text.rfind("\n", 0, offset) + 1
        line_prefix = doc.text[line_start:offset]
        m = _WORD_TAIL.search(line_prefix)
        word = m.group(0) if m else ""
        indent = line_prefix[: len(line_prefix) - len(line_prefix.lstrip(" \t"))]
        enc = ls.encoding
        from qwen_lsp.items import completion_list

        result = completion_list(
            suggestion,
            profile=ls.profile,
            word=word,
            line_indent=indent,
            word_start=types.Position(*doc.position_at(offset - len(word), enc)),
            replace_end=types.Position(
                *doc.position_at(offset + suggestion.replace_suffix_chars, enc)
            ),
            language=doc.language_id,
        )
        ls.finish(timing, t)
        return result

    @ls.feature("qwen/cursor")
    def on_cursor(ls: QwenServer, params: Any) -> None:
        """Our editor plugins say where the cursor settled: warm the engine up there."""
        try:
            uri = params.textDocument.uri
            line, character = int(params.position.line), int(params.position.character)
        except (AttributeError, TypeError, ValueError):
            return
        doc = ls.documents.get(uri)
        if doc is None:
            return
        try:
            offset = doc.offset_at(line, character, ls.encoding, strict=False)
        except PositionError:
            return
        ls.user_at(uri, offset)

    @ls.command("qwen.stats")
    def stats_command(ls: QwenServer, *args: Any) -> dict[str, Any]:
        data = ls.engine.stats.snapshot() if ls.engine else {}
        if ls.engine:
            data["cacheEntries"] = len(ls.engine.cache)
            data["upstream"] = ls.engine.health.describe()
            data["contextCache"] = {
                "mode": ls.engine.config.context_cache,
                **ls.engine.explicit_cache.describe(time.monotonic()),
            }
            data["tokensLastMinute"] = ls.engine.budget.used()
        data["provider"] = ls.settings.provider
        data["mode"] = ls.settings.effective_mode()
        data["model"] = ls.settings.answering_model()
        data["localEngine"] = ls.backend.describe()
        # For leak checks: tasks alive on the server's loop (this one included).
        data["asyncioTasks"] = len(asyncio.all_tasks())
        return data

    @ls.command("qwen.status")
    def status_command(ls: QwenServer, *args: Any) -> dict[str, Any]:
        return {
            "version": __version__,
            "settings": ls.settings.redacted_dict(),
            "problems": list(ls.problems),
            "upstream": ls.engine.health.describe() if ls.engine else None,
            "localEngine": ls.backend.describe(),
            # Where the user is, as far as the server knows (warm-up target).
            "place": None if ls.place is None else {"uri": ls.place[0], "offset": ls.place[1]},
            "localCache": ls.engine.view.describe() | {
                "warmUpRunning": ls.warmer.running, "warmUpSteps": ls.warmer.steps,
            } if ls.engine and ls.engine.view else None,
        }

    @ls.command("qwen.clearCache")
    def clear_cache(ls: QwenServer, *args: Any) -> None:
        if ls.engine:
            ls.engine.cache.clear()

    @ls.feature(types.SHUTDOWN)
    async def on_shutdown(ls: QwenServer, *args: Any) -> None:
        try:
            await asyncio.wait_for(ls.aclose(), 5.0)
        except (TimeoutError, Exception) as exc:  # noqa: BLE001 - shutdown must answer
            log.warning("shutdown cleanup: %s", type(exc).__name__)

    return ls


async def _pull_configuration(ls: QwenServer) -> bool:
    caps = ls.client_capabilities
    if not (caps and caps.workspace and caps.workspace.configuration):
        return False
    try:
        result = await asyncio.wait_for(
            ls.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section="qwen")])
            ),
            5.0,
        )
    except Exception as exc:  # noqa: BLE001 - a client may not answer; keep going
        ls.notifier.log(types.MessageType.Warning, f"workspace/configuration failed: {exc}")
        return False
    section = result[0] if result else None
    ls.workspace_config = section if isinstance(section, dict) else None
    ls.reload_settings()
    return True


def _preload() -> None:
    """Import what completions need and `initialize` did not (httpx above all)."""
    import importlib

    for name in ("qwen_lsp.providers.openai", "qwen_lsp.providers.dashscope",
                 "qwen_lsp.items", "qwen_lsp.neighbours"):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the request that needs it will report it
            log.warning("preloading %s failed: %s", name, exc)


async def _warm_local(ls: QwenServer) -> None:
    try:
        await ls.backend.provider()
        engine = ls.engine
        if engine is not None and engine.view is not None and not engine.view.measured:
            if ls.place is not None:
                ls.warmer.poke()  # pre-filling the open file measures the speed too
            elif engine.idle:
                await engine.prefill("<|fim_prefix|>" + _CALIBRATION)
    except UpstreamError as exc:
        ls.notifier.upstream_error(exc)
    except Exception as exc:  # noqa: BLE001 - never let a background task crash the server
        ls.notifier.log(types.MessageType.Error, f"local engine failed to start: {exc!r}")
