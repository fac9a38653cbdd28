"""The ``qwen-lsp`` command: serve, complete, check."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_lsp import __version__

if TYPE_CHECKING:
    from qwen_lsp.settings import Settings

EXIT_OK, EXIT_NONE, EXIT_ERROR = 0, 1, 2
CLI_LOCAL_BOX_MS = 60000
# Prompt processing the CLI spends on its one answer when it knows the engine's
# speed: the engine starts in about a second, and the answer must come within
# a few more.
CLI_PROMPT_S = 1.5
# The remembered speed is a warm engine's (a language server's); the CLI's engine
# has just started, and its first prompt went at about half that (174 tokens/s
# against 393 measured on 2026-12-07, AMD EPYC with AVX-512).
CLI_COLD_SPEED = 0.5
# Further answers, where the first was dropped, start no later than this after
# the request: the answer comes within 6 s of the command, engine start included.
CLI_MANUAL_BUDGET_S = 3.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qwen-lsp",
        description="Qwen-Coder code completion as a language server.",
    )
    p.add_argument("--version", action="version", version=f"qwen-lsp {__version__}")
    _add_launch_flags(p, top=True)
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the language server (default: stdio)")
    _add_launch_flags(serve, top=False)
    serve.add_argument("--tcp", action="store_true", help="listen on TCP instead of stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=2087)
    comp = sub.add_parser("complete", help="print a completion for PATH:LINE:COL (1-based)")
    comp.add_argument("location", help="PATH:LINE:COL, 1-based line and column")
    comp.add_argument("--language", default=None, help="language id (default: from extension)")
    sub.add_parser("check", help="show the resolved settings and make one small request")
    return p


def _add_launch_flags(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The flags generic LSP clients append when they spawn a server.

    vscode-languageclient, for one, adds ``--stdio`` (or ``--pipe=``/``--socket=``/
    ``--node-ipc``) and ``--clientProcessId=PID``. On ``serve`` the defaults are
    suppressed so that a flag given before the subcommand is not reset by it.
    """
    default = None if top else argparse.SUPPRESS
    p.add_argument("--stdio", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="talk LSP over stdin/stdout (the default)")
    p.add_argument("--clientProcessId", dest="client_pid", type=int, metavar="PID",
                   default=default, help="exit when this process (the editor) has died")
    for flag in ("--pipe", "--socket"):
        p.add_argument(flag, dest=flag[2:], metavar="NAME", default=default,
                       help=argparse.SUPPRESS)
    p.add_argument("--node-ipc", dest="node_ipc", action="store_true",
                   default=False if top else argparse.SUPPRESS, help=argparse.SUPPRESS)


_UNSUPPORTED_TRANSPORT = (
    "qwen-lsp: the {flag} transport is not supported; start the server over stdio "
    "(no flag, or --stdio) or with 'serve --tcp --port N'"
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in (None, "serve"):
        for flag, given in (("--pipe", args.pipe), ("--socket", args.socket),
                            ("--node-ipc", args.node_ipc or None)):
            if given is not None:
                print(_UNSUPPORTED_TRANSPORT.format(flag=flag), file=sys.stderr)
                return EXIT_ERROR
        if args.client_pid is not None and args.client_pid <= 0:
            print(f"qwen-lsp: --clientProcessId must be a process id, got {args.client_pid}",
                  file=sys.stderr)
            return EXIT_ERROR
        if args.client_pid is not None:
            _watch_client(args.client_pid)
        return _serve(getattr(args, "tcp", False), getattr(args, "host", "127.0.0.1"),
                      getattr(args, "port", 2087))
    if args.command == "complete":
        return asyncio.run(_complete(args.location, args.language))
    if args.command == "check":
        return asyncio.run(_check())
    return EXIT_ERROR


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _watch_client(pid: int, interval: float = 1.0) -> None:
    """Exit once the editor process is gone (its pipes may be inherited by others).

    The local engine child has its own parent-death watch, so a hard exit here
    takes it along.
    """
    import threading

    def watch() -> None:
        while _pid_alive(pid):
            time.sleep(interval)
        logging.getLogger("qwen_lsp").warning("client process %d has exited; stopping", pid)
        os._exit(0)

    threading.Thread(target=watch, name="qwen-client-watch", daemon=True).start()


def _serve(tcp: bool, host: str, port: int) -> int:
    from qwen_lsp.server import create_server

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="qwen-lsp %(levelname)s %(message)s")
    server = create_server()
    if tcp:
        server.start_tcp(host, port)
    else:
        server.start_io()
    return 0


_LANGUAGES = {
    ".py": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".ts": "typescript", ".tsx": "typescriptreact", ".jsx": "javascriptreact", ".go": "go",
    ".rs": "rust", ".java": "java", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp",
    ".hpp": "cpp", ".rb": "ruby", ".sh": "shellscript", ".lua": "lua", ".kt": "kotlin",
    ".cs": "csharp", ".php": "php", ".swift": "swift", ".el": "emacs-lisp",
}


def language_for(path: Path) -> str:
    return _LANGUAGES.get(path.suffix.lower(), path.suffix.lstrip(".").lower())


def _parse_location(location: str) -> tuple[Path, int, int]:
    try:
        path_s, line_s, col_s = location.rsplit(":", 2)
        line, col = int(line_s), int(col_s)
    except ValueError:
        raise ValueError(f"expected PATH:LINE:COL with 1-based numbers, got {location!r}") from None
    if line < 1 or col < 1:
        raise ValueError("LINE and COL are 1-based and must be >= 1")
    return Path(path_s), line, col


def _location_problem(doc: Any, line: int, col: int) -> str | None:
    """Why LINE:COL (1-based, columns in characters) is not a place in ``doc``.

    The empty line after a final newline is a place to type, so it may be
    addressed, but it is not counted as a line of the file.
    """
    last = doc.line_count  # includes that empty last line
    lines = last - 1 if doc.text.endswith(("\n", "\r")) or not doc.text else last
    if line > last:
        noun = "line" if lines == 1 else "lines"
        return f"the file has only {lines} {noun}; LINE must be 1 to {last}"
    width = len(doc.line_text(line - 1))
    if col > width + 1:
        noun = "character" if width == 1 else "characters"
        return (f"line {line} has {width} {noun}; COL must be 1 to {width + 1} "
                "(the end of the line)")
    return None


class ProgressLines:
    """Progress on ``stream`` (stderr): a line per message, and in between one
    per quarter of the work, so a log or a pipe gets a handful of lines rather
    than one every 2 % of the model's assembly."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream
        self._message: str | None = None
        self._quarter = -1

    def __call__(self, message: str, fraction: float | None) -> None:
        quarter = -1 if fraction is None else int(fraction * 4)
        if message == self._message and quarter == self._quarter:
            return
        self._message, self._quarter = message, quarter
        pct = "" if fraction is None else f" {int(fraction * 100):3d}%"
        print(f"qwen-lsp:{pct} {message}", file=self._stream or sys.stderr, flush=True)


async def _complete(location: str, language: str | None) -> int:
    from qwen_lsp.backend import Backend
    from qwen_lsp.context import CompletionContext, build_context
    from qwen_lsp.documents import UTF32, Document
    from qwen_lsp.engine import Engine, EngineConfig
    from qwen_lsp.exclude import is_excluded, is_text
    from qwen_lsp.prompt_cache import STATE_CACHE_BYTES, TARGET_PROMPT_S, EngineView, fit_context
    from qwen_lsp.providers.base import UpstreamError
    from qwen_lsp.settings import NO_BACKEND_MESSAGE, load_settings
    from qwen_lsp.speed_memory import load_speed, save_speed

    try:
        path, line, col = _parse_location(location)
        raw = path.read_bytes()
    except (ValueError, OSError) as exc:
        print(f"qwen-lsp: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not is_text(raw):
        print(f"qwen-lsp: {path} is not a text file; nothing is sent", file=sys.stderr)
        return EXIT_NONE
    text = raw.decode("utf-8", errors="surrogateescape")
    settings, problems = load_settings(env=os.environ)
    for p in problems:
        print(f"qwen-lsp: settings: {p}", file=sys.stderr)
    if settings.provider is None:
        print(f"qwen-lsp: {NO_BACKEND_MESSAGE}", file=sys.stderr)
        return EXIT_ERROR
    if is_excluded(path, settings.exclude, root=Path.cwd(),
                   respect_gitignore=settings.respect_gitignore):
        print(f"qwen-lsp: {path} matches an exclude pattern; nothing is sent", file=sys.stderr)
        return EXIT_ERROR
    doc = Document(uri=path.resolve().as_uri(), text=text)
    problem = _location_problem(doc, line, col)
    if problem:
        print(f"qwen-lsp: {path}:{line}:{col}: {problem}", file=sys.stderr)
        return EXIT_ERROR
    offset = doc.offset_at(line - 1, col - 1, UTF32, strict=True)

    def build(tokens: int) -> CompletionContext:
        return build_context(
            text, offset, uri=doc.uri, path=path.name, language=language or language_for(path),
            version=0, context_tokens=tokens, multiline_setting=settings.multiline,
            manual=True, max_output_tokens=settings.max_tokens,
            context_window=settings.context_size if settings.provider == "local" else None,
        )

    view = EngineView(STATE_CACHE_BYTES) if settings.provider == "local" else None
    remembered = load_speed() if view is not None else None
    if view is not None and settings.adaptive_budget and settings.effective_mode() == "fim":
        # A fresh engine has nothing cached: the window that fits a budget of
        # prompt processing (CLI_PROMPT_S at the speed measured on this machine
        # before; about a second at a cautious guess the first time), so the
        # answer comes within a few seconds, engine start included.
        if remembered:
            view.tokens_per_s = remembered * CLI_COLD_SPEED
        ctx = fit_context(build, view, settings.context_tokens,
                          seconds=CLI_PROMPT_S if remembered else TARGET_PROMPT_S)
    else:
        ctx = build(settings.context_tokens)
    errors: list[UpstreamError] = []
    if settings.provider == "local":
        # The CLI waits for the whole answer, engine start included: a longer box,
        # and through the settings so the HTTP read timeout stays above it.
        settings = settings.with_overrides(timeout_ms=max(settings.timeout_ms, CLI_LOCAL_BOX_MS))
    backend = Backend(settings, progress=ProgressLines())
    engine = Engine(
        EngineConfig(mode=settings.effective_mode(), max_tokens=settings.max_tokens,
                     temperature=settings.temperature, stop=tuple(settings.stop),
                     timeout_ms=settings.time_box_ms(),
                     extra_body=backend.extra_body(), early_answers=False,
                     partial_on_timeout=False, next_line=settings.upstream_is_local(),
                     second_tries=settings.provider == "local",
                     manual_budget_s=CLI_MANUAL_BUDGET_S),
        backend.provider,
        on_error=errors.append,
        view=view,
    )
    try:
        suggestion = await engine.complete(ctx)
    finally:
        await engine.aclose()
        await backend.aclose()
    if view is not None and view.measured and not remembered:
        # The first measurement on this machine. A cold engine's first prompt
        # is its slowest, so it never replaces a language server's warm one.
        save_speed(view.tokens_per_s)
    if errors:
        print(f"qwen-lsp: {errors[0].message}", file=sys.stderr)
        return EXIT_ERROR
    if suggestion is None:
        # Said, so that a script or a person can tell "nothing" from a failure.
        print(f"qwen-lsp: no suggestion at {path}:{line}:{col}: the model's answers there "
              "were empty or the code that is already there", file=sys.stderr)
        return EXIT_NONE
    text, replaced = suggestion.text, ctx.line_suffix[:suggestion.replace_suffix_chars]
    if replaced and text.endswith(replaced):
        # It ends with the characters it replaces (closers typed over): the
        # same as inserting the rest.
        text, replaced = text[: len(text) - len(replaced)], ""
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    if replaced:
        print(f"qwen-lsp: the suggestion replaces {replaced!r}, the {len(replaced)} characters "
              f"of line {line} from column {col} on", file=sys.stderr)
    return EXIT_OK


async def _check() -> int:
    from qwen_lsp.backend import Backend
    from qwen_lsp.prompts import stop_sequences
    from qwen_lsp.providers.base import TextDelta, UpstreamError, UpstreamRequest
    from qwen_lsp.settings import NO_BACKEND_MESSAGE, load_settings

    settings, problems = load_settings(env=os.environ)
    shown = settings.redacted_dict()
    model = settings.answering_model()
    # The local engine serves its own model whatever `model` says: show that one.
    shown["model"] = model
    print(json.dumps(shown, indent=2, sort_keys=True))
    print(f"effective mode: {settings.effective_mode()}")
    print(f"base URL: {settings.resolved_base_url() or '(local engine)'}")
    print(f"model: {model}" + (" (local engine)" if settings.provider == "local" else ""))
    for p in problems:
        print(f"problem: {p}")
    if settings.provider is None:
        print(f"error: {NO_BACKEND_MESSAGE}", file=sys.stderr)
        return EXIT_ERROR
    backend = Backend(settings, progress=ProgressLines())
    mode = settings.effective_mode()
    if mode == "fim":
        req = UpstreamRequest(prompt="<|fim_prefix|>def add(a, b):\n    return <|fim_suffix|>\n"
                              "<|fim_middle|>", max_tokens=8, temperature=0.0,
                              stop=stop_sequences("fim"), extra=backend.extra_body())
    else:
        req = UpstreamRequest(messages=[
            {"role": "user", "content": "Complete the Python function."},
            {"role": "assistant", "content": "def add(a, b):\n    return", "partial": True},
        ], max_tokens=8, temperature=0.0)
    t0 = time.monotonic()
    text = ""
    try:
        provider = await backend.provider()
        if backend.local_engine is not None:
            print(f"local engine: {json.dumps(backend.describe())}")
        stream = provider.stream(req)
        try:
            async for ev in stream:
                if isinstance(ev, TextDelta):
                    text += ev.text
        finally:
            await stream.aclose()
    except UpstreamError as exc:
        print(f"error ({exc.kind}): {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        await backend.aclose()
    print(f"ok: {settings.provider} ({model}) answered in {time.monotonic() - t0:.2f}s: "
          f"{text.strip()!r}")
    if settings.provider != "local":
        print(typical_cost(settings))
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        print(f"error: the settings have {len(problems)} {noun} (above)", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


TYPICAL_OUTPUT_TOKENS = 40
TYPICAL_REUSED = 0.9  # share of a prompt that repeats the previous one while typing


def typical_cost(settings: Settings) -> str:
    """What one completion of the configured size costs, by cache outcome."""
    from qwen_lsp.pricing import cost, price_for
    from qwen_lsp.providers.base import Usage

    price = price_for(settings.model, settings.prices)
    if price is None:
        return (f"cost: no price known for model {settings.model!r}; set `prices` to see "
                "what a request costs")
    size = settings.context_tokens
    reused = int(size * TYPICAL_REUSED)
    cases = [("no cache hit", Usage(size, TYPICAL_OUTPUT_TOKENS)),
             (f"implicit cache hit on {TYPICAL_REUSED:.0%}",
              Usage(size, TYPICAL_OUTPUT_TOKENS, cached_tokens=reused))]
    if settings.context_cache_mode() != "implicit":
        cases.append((f"explicit cache hit on {TYPICAL_REUSED:.0%}",
                      Usage(size, TYPICAL_OUTPUT_TOKENS, explicit_cached_tokens=reused)))
        cases.append(("creating an explicit cache",
                      Usage(size, TYPICAL_OUTPUT_TOKENS, cache_creation_tokens=reused)))
    shown = "; ".join(f"{cost(u, price):.6f} {price.currency} with {label}"
                      for label, u in cases)
    return (f"cost of a typical request ({size} input tokens, the contextTokens budget, "
            f"+ {TYPICAL_OUTPUT_TOKENS} output, {settings.model}, contextCache "
            f"{settings.context_cache_mode()}): {shown}")
