"""The pygls language server: thin handlers between LSP and the engine.

Handlers convert LSP positions to offsets (in the negotiated encoding), build
the completion context, ask the engine, and shape the answer for the client.
They never block the event loop and never raise into the editor: every
request gets an answer, an empty one when there is nothing useful to say.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.protocol.json_rpc import RPCRequest

from qwen_lsp import __version__
from qwen_lsp.backend import Backend
from qwen_lsp.context import build_context, skip_reason
from qwen_lsp.documents import (
    UTF8,
    UTF16,
    UTF32,
    Document,
    DocumentStore,
    PositionError,
)
from qwen_lsp.engine import Engine, EngineConfig, Timing
from qwen_lsp.exclude import is_excluded
from qwen_lsp.items import client_profile, completion_list, inline_items
from qwen_lsp.neighbours import Neighbours
from qwen_lsp.notify import Notifier
from qwen_lsp.providers.base import UpstreamError
from qwen_lsp.settings import NO_BACKEND_MESSAGE, Settings, load_settings

log = logging.getLogger("qwen_lsp")

TYPING_BURST_S = 1.0
TRIGGER_CHARACTERS = [".", "(", "[", "{", ",", ":", "=", " ", "\n", "\t", ">", '"', "'"]
_WORD_TAIL = re.compile(r"\w+$")
_ENCODINGS = {
    types.PositionEncodingKind.Utf8: UTF8,
    types.PositionEncodingKind.Utf16: UTF16,
    types.PositionEncodingKind.Utf32: UTF32,
}


class QwenProtocol(LanguageServerProtocol):
    """Keeps documents in our own store instead of pygls' workspace copy."""

    _server: QwenServer

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
        self._server.last_completion.pop(uri, None)
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
        self.profile = client_profile(None, None)
        self.root: Path | None = None
        self.notifier = Notifier(self)
        self.engine: Engine | None = None
        self.backend = Backend(
            self.settings,
            progress=self.notifier.engine_progress,
            log=lambda m: self.notifier.log(types.MessageType.Log, m),
        )
        self.neighbours = Neighbours()
        self._desynced: set[str] = set()
        self._files: dict[str, tuple[str, bool]] = {}
        self.last_completion: dict[str, float] = {}
        # Set once the first workspace/configuration answer is in (or known
        # not to come), so the first completion uses the user's settings.
        self.config_ready = asyncio.Event()

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
        if problems:
            self.notifier.problems(problems)
        config = self._engine_config(settings)
        if self.engine is None:
            self.engine = Engine(
                config,
                self.backend.provider,
                on_error=self.notifier.upstream_error,
                on_success=self.notifier.upstream_ok,
                on_timeout=lambda ms: self.notifier.timeout(
                    f"a completion was cut off at the {ms} ms time box (qwen.timeoutMs)"),
            )
        else:
            self.engine.config = config
        if changed_backend:
            asyncio.get_event_loop().create_task(self._switch_backend())
        logging.getLogger("qwen_lsp").setLevel(settings.log_level.upper())

    async def _switch_backend(self) -> None:
        """New backend settings: drop the old client (and a local engine that no
        longer matches), then, once the session is set up, start the new local
        engine in the background as at start-up."""
        await self.backend.reset_provider()
        s = self.settings
        if self.config_ready.is_set() and s.provider == "local" and s.enabled:
            await _warm_local(self)

    def _engine_config(self, s: Settings) -> EngineConfig:
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
        )

    async def aclose(self) -> None:
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

    # -- completion ----------------------------------------------------------------
    async def suggest(
        self, uri: str, position: types.Position, *, manual: bool
    ) -> tuple[Document, Any, int, Timing] | None:
        """The suggestion at ``position``, or None; records server overhead."""
        if not self.config_ready.is_set():
            try:
                await asyncio.wait_for(self.config_ready.wait(), 3.0)
            except TimeoutError:
                self.config_ready.set()
        timing = Timing()
        found = None
        try:
            found = await self._suggest(uri, position, manual, timing)
            return found
        finally:
            # Answered requests are recorded by finish(), after item shaping.
            if found is None and self.engine is not None:
                self.engine.stats.record_overhead(timing.busy)

    async def _suggest(
        self, uri: str, position: types.Position, manual: bool, timing: Timing
    ) -> tuple[Document, Any, int, Timing] | None:
        t = time.perf_counter()
        doc = self.documents.get(uri)
        if doc is None or uri in self._desynced or self.engine is None:
            timing.add(t)
            return None
        try:
            offset = doc.offset_at(position.line, position.character, self.encoding, strict=True)
        except PositionError:
            timing.add(t)
            return None
        s = self.settings
        if not s.enabled or doc.language_id in s.disabled_languages:
            timing.add(t)
            return None
        rel, excluded = self._file_info(uri)
        if excluded or doc.larger_than(s.max_file_bytes):
            timing.add(t)
            return None
        snippets = ()
        if s.cross_file:
            snippets = self.neighbours.snippets_for(
                doc, offset, documents=self.documents, settings=s, root=self.root
            )
        ctx = build_context(
            doc.text,
            offset,
            uri=uri,
            path=rel,
            language=doc.language_id,
            version=doc.version,
            context_tokens=s.context_tokens,
            multiline_setting=s.multiline,
            snippets=snippets,
            repo_name=self.root.name if self.root else "",
            manual=manual,
            max_output_tokens=s.max_tokens,
            context_window=s.context_size if s.provider == "local" else None,
        )
        if skip_reason(ctx, untitled=not uri.startswith("file:")) is not None:
            self.engine.stats.skipped += 1
            timing.add(t)
            return None
        version = doc.version
        t = timing.add(t)

        def current() -> bool:
            return self.documents.get(uri) is doc and doc.version == version

        try:
            suggestion = await self.engine.complete(ctx, is_current=current, timing=timing)
        except UpstreamError as exc:  # pragma: no cover - engine reports its own errors
            self.notifier.upstream_error(exc)
            return None
        if suggestion is None or not current():
            return None
        return doc, suggestion, offset, timing

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
        ls.profile = client_profile(params.client_info, params.capabilities)
        root = params.root_uri or (
            params.workspace_folders[0].uri if params.workspace_folders else None
        )
        if root and (p := _uri_path(root)):
            ls.root = Path(p)
        elif params.root_path:
            ls.root = Path(params.root_path)
        ls.neighbours.root = ls.root
        ls.reload_settings()

    @ls.feature(types.INITIALIZED)
    async def on_initialized(ls: QwenServer, params: types.InitializedParams) -> None:
        try:
            await _pull_configuration(ls)
        finally:
            ls.config_ready.set()
        if ls.settings.provider is None:
            ls.notifier.show_once("no-backend", types.MessageType.Warning, NO_BACKEND_MESSAGE)
        elif ls.settings.provider == "local" and ls.settings.enabled:
            # Start the embedded engine now so the first keystroke doesn't wait.
            asyncio.get_running_loop().create_task(_warm_local(ls))

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
        found = await ls.suggest(params.text_document.uri, params.position, manual=manual)
        if found is None:
            return None
        doc, suggestion, offset, timing = found
        t = time.perf_counter()
        cursor = types.Position(*doc.position_at(offset, ls.encoding))
        end = types.Position(*doc.position_at(offset + suggestion.replace_suffix_chars,
                                              ls.encoding))
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
        line_start = doc.text.rfind("\n", 0, offset) + 1
        line_prefix = doc.text[line_start:offset]
        m = _WORD_TAIL.search(line_prefix)
        word = m.group(0) if m else ""
        indent = line_prefix[: len(line_prefix) - len(line_prefix.lstrip(" \t"))]
        enc = ls.encoding
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

    @ls.command("qwen.stats")
    def stats_command(ls: QwenServer, *args: Any) -> dict[str, Any]:
        data = ls.engine.stats.snapshot() if ls.engine else {}
        if ls.engine:
            data["cacheEntries"] = len(ls.engine.cache)
            data["upstream"] = ls.engine.health.describe()
        data["provider"] = ls.settings.provider
        data["mode"] = ls.settings.effective_mode()
        data["model"] = ls.settings.model
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


async def _warm_local(ls: QwenServer) -> None:
    try:
        await ls.backend.provider()
    except UpstreamError as exc:
        ls.notifier.upstream_error(exc)
    except Exception as exc:  # noqa: BLE001 - never let a background task crash the server
        ls.notifier.log(types.MessageType.Error, f"local engine failed to start: {exc!r}")
