"""One typed settings object, merged from every place a user can configure qwen-lsp.

Layers, lowest to highest precedence:

1. defaults (the field defaults of :class:`Settings`)
2. the config file, ``$XDG_CONFIG_HOME/qwen-lsp/config.toml`` (default
   ``~/.config/qwen-lsp/config.toml``): camelCase keys at the top level or in a
   ``[qwen]`` table
3. the environment: ``QWEN_LSP_<UPPER_SNAKE>`` (``DASHSCOPE_API_KEY`` also sets the key)
4. LSP ``initializationOptions`` (flat, or nested under ``"qwen"``)
5. LSP ``workspace/configuration`` for section ``"qwen"``

Nothing here raises on bad input. Each invalid or unknown value becomes one
human-readable problem string and is ignored, so the value from the layer below
(usually the default) stays in effect. The API key never appears in a message,
a repr, or :meth:`Settings.redacted_dict`.

Value conventions shared by all layers: ``None`` (JSON null) and blank strings
mean "not set here" so that an editor sending empty defaults cannot wipe out a
key exported in the environment; ``"auto"`` explicitly selects the automatic
behaviour of ``provider``, ``debounceMs`` and ``threads``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen_lsp.pricing import Price, PriceError, parse_prices, price_dict

__all__ = [
    "DEFAULT_EXCLUDE",
    "ENV_PREFIX",
    "NO_BACKEND_MESSAGE",
    "SECTION",
    "Settings",
    "camel",
    "default_config_path",
    "load_settings",
    "local_engine_installed",
    "redact_key",
    "snake",
]

SECTION = "qwen"
ENV_PREFIX = "QWEN_LSP_"
DASHSCOPE_KEY_ENV = "DASHSCOPE_API_KEY"

NO_BACKEND_MESSAGE = (
    "No completion backend: set DASHSCOPE_API_KEY (provider=dashscope), point baseUrl at an "
    "OpenAI-compatible server (provider=openai), or install the local engine with "
    'pip install -e ".[local]" in a qwen-lsp checkout (provider=local).'
)

# Files whose contents must never be sent to a model.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    ".env*",
    "*.pem",
    "*.key",
    "id_rsa*",
    "*.p12",
    "*.pfx",
    "secrets.*",
    "credentials*",
    ".git/",
)

# Documented DashScope endpoints, keyed by (api, region).
_BASE_URLS: dict[tuple[str, str], str] = {
    ("openai", "intl"): "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    ("openai", "cn"): "https://dashscope.aliyuncs.com/compatible-mode/v1",
    ("dashscope", "intl"): "https://dashscope-intl.aliyuncs.com/api/v1",
    ("dashscope", "cn"): "https://dashscope.aliyuncs.com/api/v1",
}

# Models served by the (Beijing-only) Completions API, i.e. the ones that take a raw FIM prompt.
_COMPLETIONS_API_MODELS = frozenset(
    {"qwen-coder-turbo", "qwen-coder-turbo-latest", "qwen-coder-turbo-0919"}
)
_COMPLETIONS_API_PATTERN = re.compile(r"qwen2\.5-coder-\d+(?:\.\d+)?b-instruct")

_REDACTED = "(redacted)"


def camel(name: str) -> str:
    """``max_tokens`` -> ``maxTokens`` (already-camel names pass through)."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake(name: str) -> str:
    """``maxTokens`` -> ``max_tokens``; acronyms stay together (``baseURL`` -> ``base_url``)."""
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", spaced)
    return spaced.replace("-", "_").lower()


def redact_key(key: str | None) -> str | None:
    """A display form of an API key that reveals only whether it is set."""
    if not key:
        return None
    return ("sk-…" if key.startswith("sk-") else "…") + _REDACTED


LOCAL_MIN_TIME_BOX_MS = 30000
# The HTTP read timeout sits this far above the time box: the box decides, the
# read timeout only catches a connection that went silent.
READ_TIMEOUT_MARGIN_MS = 5000


@dataclass(frozen=True)
class Settings:
    """Every knob of qwen-lsp. Build it with :func:`load_settings`."""

    enabled: bool = True  # false: no completions and no upstream calls at all
    disabled_languages: tuple[str, ...] = ()  # LSP language ids with no completions
    provider: str | None = None  # "dashscope" | "openai" | "local"; None until resolved
    region: str = "intl"  # "intl" | "cn"
    base_url: str | None = None
    api: str = "openai"  # "openai" (compatible-mode) | "dashscope" (native)
    api_key: str | None = None  # never shown: see __repr__ and redacted_dict
    model: str = "qwen3-coder-flash"
    mode: str = "auto"  # "auto" | "fim" | "partial"
    temperature: float = 0.0
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    timeout_ms: int = 10000  # overall time box of one completion
    connect_timeout_ms: int = 3000
    debounce_ms: int | None = None  # None = adaptive
    debounce_min_ms: int = 30
    debounce_max_ms: int = 600
    context_tokens: int = 1536
    # Local engine: size the window by what the engine has cached and how fast
    # it is (about a second of new prompt), and warm it up while the user pauses.
    # False: always contextTokens, no warm-up (the fixed-budget path).
    adaptive_budget: bool = True
    multiline: str = "auto"  # "auto" | "always" | "never"
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    respect_gitignore: bool = False
    max_file_bytes: int = 1_000_000
    cross_file: bool = True
    log_level: str = "info"  # "error" | "warning" | "info" | "debug"
    model_path: str | None = None  # local engine GGUF file
    threads: int | None = None  # local engine threads (None: os.cpu_count())
    context_size: int = 4096  # local engine n_ctx
    context_cache: str = "auto"  # "auto" | "explicit" | "implicit" (DashScope context cache)
    prices: tuple[tuple[str, Price], ...] = ()  # per-model overrides of the price table
    max_tokens_per_minute: int = 0  # local token budget (0: no limit)

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = redact_key(value) if f.name == "api_key" else value
            parts.append(f"{f.name}={shown!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

    def redacted_dict(self) -> dict[str, Any]:
        """JSON-safe camelCase view of every field, with the API key redacted."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "api_key":
                value = redact_key(value)
            elif f.name == "prices":
                value = {model: price_dict(price) for model, price in value}
            elif isinstance(value, tuple):
                value = list(value)
            out[camel(f.name)] = value
        return out

    def resolved_base_url(self) -> str | None:
        """The URL requests go to: ``base_url`` if set, else the documented DashScope one.

        The local provider has no fixed URL; the engine manager fills ``base_url``
        in at runtime, so until then this is None.
        """
        if self.base_url:
            return self.base_url.rstrip("/")
        if self.provider == "local":
            return None
        return _BASE_URLS.get((self.api, self.region))

    def upstream_is_local(self) -> bool:
        """The requests go to this machine (the local engine, or a server on loopback)."""
        if self.provider == "local":
            return True
        from urllib.parse import urlsplit

        host = (urlsplit(self.resolved_base_url() or "").hostname or "").lower()
        return host == "localhost" or host == "::1" or host.startswith("127.")

    def time_box_ms(self) -> int:
        """The time box of one completion as the engine applies it.

        The local CPU engine gets at least LOCAL_MIN_TIME_BOX_MS: its prompt
        budget aims at about a second, but a cold start or a busy machine can
        take longer, and cutting a prompt off leaves its KV cache cold.
        """
        if self.provider == "local":
            return max(self.timeout_ms, LOCAL_MIN_TIME_BOX_MS)
        return self.timeout_ms

    def effective_mode(self) -> str:
        """``"fim"`` or ``"partial"``: what the request builder should actually do."""
        if self.mode == "partial":
            return "partial"
        if self.mode == "fim":
            # The native DashScope endpoint only speaks chat; FIM is impossible there.
            return "partial" if self._native_dashscope() else "fim"
        return "fim" if self._auto_fim() else "partial"

    def context_cache_mode(self) -> str:
        """The engine's context-cache behaviour: "implicit", "policy" or "explicit".

        Explicit caching needs content blocks, so partial mode. "auto" uses it
        (through the cost policy) only on DashScope with a model that has it.
        """
        if self.effective_mode() != "partial" or self.context_cache == "implicit":
            return "implicit"
        if self.context_cache == "explicit":
            return "explicit"
        if self.provider == "dashscope" and supports_explicit_cache(self.model):
            return "policy"
        return "implicit"

    def answering_model(self) -> str:
        """The model that really answers.

        The local engine serves its one GGUF file (``modelPath`` or the bundled
        0.5B model) whatever ``model`` says; other providers use ``model``.
        """
        if self.provider != "local":
            return self.model
        if self.model_path:
            return Path(self.model_path).expanduser().name
        from qwen_lsp.providers.local_model import MODEL_FILENAME

        return MODEL_FILENAME

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (no validation: for trusted callers)."""
        return dataclasses.replace(self, **changes)

    def _native_dashscope(self) -> bool:
        # ``api`` only matters for DashScope; openai/local servers are always OpenAI-style.
        return self.api == "dashscope" and self.provider not in ("openai", "local")

    def _auto_fim(self) -> bool:
        if self.provider in ("openai", "local"):
            return True
        return (
            self.provider == "dashscope"
            and self.api == "openai"
            and self.region == "cn"
            and _served_by_completions_api(self.model)
        )


# Models whose explicit context cache DashScope documents (dated snapshots included).
EXPLICIT_CACHE_MODELS: tuple[str, ...] = ("qwen3-coder-plus", "qwen3-coder-flash")


def supports_explicit_cache(model: str) -> bool:
    name = model.strip().lower()
    return any(name == m or name.startswith(m + "-") for m in EXPLICIT_CACHE_MODELS)


def _served_by_completions_api(model: str) -> bool:
    name = model.strip().lower()
    return name in _COMPLETIONS_API_MODELS or _COMPLETIONS_API_PATTERN.fullmatch(name) is not None


# ---------------------------------------------------------------------------
# Parsing one value. Each parser returns the typed value or raises _Invalid.
# ---------------------------------------------------------------------------


class _Invalid(ValueError):
    """A raw value does not fit; the expected shape lives in the field's _Rule."""


_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def _auto_word(raw: Any) -> bool:
    return isinstance(raw, str) and raw.strip().lower() == "auto"


def _parse_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise _Invalid
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        try:
            return int(raw.strip().replace("_", ""))
        except ValueError:
            raise _Invalid from None
    raise _Invalid


def _parse_float(raw: Any) -> float:
    if isinstance(raw, bool):
        raise _Invalid
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Invalid from None
    else:
        raise _Invalid
    if not math.isfinite(value):
        raise _Invalid
    return value


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise _Invalid


def _parse_str_list(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            # A JSON array lets env users pass items containing commas or escapes.
            try:
                raw = json.loads(text)
            except ValueError:
                raise _Invalid from None
        else:
            return tuple(item.strip() for item in text.split(",") if item.strip())
    if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
        return tuple(raw)
    raise _Invalid


@dataclass(frozen=True)
class _Rule:
    """How one field's raw values are parsed and checked."""

    expected: str  # shown to the user: what is allowed
    parse: Callable[[Any], Any]
    auto_means_none: bool = False  # "auto" selects None (automatic behaviour)


def _enum_rule(
    *choices: str, aliases: Mapping[str, str] | None = None, auto_none: bool = False
) -> _Rule:
    table = {c: c for c in choices} | dict(aliases or {})

    def parse(raw: Any) -> str:
        if not isinstance(raw, str) or raw.strip().lower() not in table:
            raise _Invalid
        return table[raw.strip().lower()]

    words = list(choices) + (["auto"] if auto_none else [])
    return _Rule("one of " + ", ".join(f'"{w}"' for w in words), parse, auto_none)


def _int_rule(lo: int, hi: int | None = None, *, auto_none: bool = False) -> _Rule:
    def parse(raw: Any) -> int:
        value = _parse_int(raw)
        if value < lo or (hi is not None and value > hi):
            raise _Invalid
        return value

    shape = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
    return _Rule(shape + (' or "auto"' if auto_none else ""), parse, auto_none)


def _float_rule(lo: float, hi: float) -> _Rule:
    def parse(raw: Any) -> float:
        value = _parse_float(raw)
        if not lo <= value <= hi:
            raise _Invalid
        return value

    return _Rule(f"a number from {lo:g} to {hi:g}", parse)


def _text_rule(expected: str = "a non-empty string") -> _Rule:
    def parse(raw: Any) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise _Invalid
        return raw.strip()

    return _Rule(expected, parse)


def _prices_parse(raw: Any) -> tuple[tuple[str, Price], ...]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise _Invalid from None
    try:
        return parse_prices(raw)
    except PriceError:
        raise _Invalid from None


def _url_parse(raw: Any) -> str:
    if not isinstance(raw, str) or not re.match(r"https?://[^\s/]", raw.strip()):
        raise _Invalid
    return raw.strip()


def _path_parse(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise _Invalid
    return os.path.expanduser(raw.strip())


_RULES: dict[str, _Rule] = {
    "enabled": _Rule("true or false", _parse_bool),
    "disabled_languages": _Rule(
        "a list of language ids (comma-separated in the environment)", _parse_str_list
    ),
    "provider": _enum_rule("dashscope", "openai", "local", auto_none=True),
    "region": _enum_rule("intl", "cn"),
    "base_url": _Rule("an http:// or https:// URL", _url_parse),
    "api": _enum_rule("openai", "dashscope"),
    "api_key": _text_rule("a non-empty string"),
    "model": _text_rule("a non-empty model name"),
    "mode": _enum_rule("auto", "fim", "partial"),
    "temperature": _float_rule(0.0, 2.0),
    "max_tokens": _int_rule(1, 4096),
    "stop": _Rule("a list of strings (comma-separated in the environment)", _parse_str_list),
    "timeout_ms": _int_rule(1),
    "connect_timeout_ms": _int_rule(1),
    "debounce_ms": _int_rule(0, auto_none=True),
    "debounce_min_ms": _int_rule(0),
    "debounce_max_ms": _int_rule(0),
    "context_tokens": _int_rule(256),
    "multiline": _enum_rule("auto", "always", "never"),
    "exclude": _Rule(
        "a list of glob patterns (comma-separated in the environment)", _parse_str_list
    ),
    "respect_gitignore": _Rule("true or false", _parse_bool),
    "max_file_bytes": _int_rule(1),
    "cross_file": _Rule("true or false", _parse_bool),
    "adaptive_budget": _Rule("true or false", _parse_bool),
    "log_level": _enum_rule("error", "warning", "info", "debug", aliases={"warn": "warning"}),
    "model_path": _Rule("a path to a GGUF file", _path_parse),
    "threads": _int_rule(1, auto_none=True),
    "context_size": _int_rule(512),
    "context_cache": _enum_rule("auto", "explicit", "implicit"),
    "prices": _Rule(
        'an object of model -> {"input": USD per million tokens, "output": ...} or '
        '{"tiers": [{"upTo": input tokens, "input": ..., "output": ...}, ...], "currency": ...} '
        "(JSON in the environment)",
        _prices_parse,
    ),
    "max_tokens_per_minute": _int_rule(0),
}

_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Settings))
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Settings)}
assert set(_RULES) == set(_FIELD_NAMES), "every Settings field needs a rule"


def _fold(key: str) -> str:
    # Key matching ignores case, "_" and "-": maxTokens, max_tokens and MAX-TOKENS all match.
    return key.replace("_", "").replace("-", "").lower()


_FIELD_BY_FOLDED: dict[str, str] = {_fold(name): name for name in _FIELD_NAMES}


def _suggest(key: str) -> str:
    camels = [camel(name) for name in _FIELD_NAMES]
    close = difflib.get_close_matches(key, camels, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


# ---------------------------------------------------------------------------
# Collecting raw entries from each layer: (field, label shown to the user, raw value).
# ---------------------------------------------------------------------------

_Entry = tuple[str, str, Any]


def _collect_mapping(data: Any, source: str, problems: list[str]) -> list[_Entry]:
    """Entries from a flat dict, a ``{"qwen": {...}}`` dict, or both (the section wins)."""
    if data is None:
        return []
    if not isinstance(data, Mapping):
        problems.append(f"{source} should be an object of settings, not {_show(data)}; ignored.")
        return []
    entries: list[_Entry] = []
    for key, value in data.items():
        if key == SECTION:
            continue
        field = _FIELD_BY_FOLDED.get(_fold(str(key)))
        if field is not None:
            entries.append((field, str(key), value))
        elif not isinstance(value, Mapping):  # nested tables are other tools' sections
            problems.append(_unknown_message(str(key), source))
    section = data.get(SECTION)
    if section is None:
        return entries
    if not isinstance(section, Mapping):
        problems.append(f'"{SECTION}" in {source} should be an object of settings; ignored.')
        return entries
    for key, value in section.items():
        field = _FIELD_BY_FOLDED.get(_fold(str(key)))
        if field is None:
            problems.append(_unknown_message(f"{SECTION}.{key}", source, str(key)))
        else:
            entries.append((field, f"{SECTION}.{key}", value))
    return entries


def _unknown_message(label: str, source: str, key: str | None = None) -> str:
    return f'Unknown setting "{label}" in {source}{_suggest(key or label)}; ignored.'


def _collect_env(env: Mapping[str, str], problems: list[str]) -> list[_Entry]:
    entries: list[_Entry] = []
    if env.get(DASHSCOPE_KEY_ENV, "").strip():
        entries.append(("api_key", DASHSCOPE_KEY_ENV, env[DASHSCOPE_KEY_ENV]))
    known = {ENV_PREFIX + name.upper(): name for name in _FIELD_NAMES}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        field = known.get(var)
        if field is None:
            suffix = var[len(ENV_PREFIX) :]
            hint = _suggest(camel(suffix.lower()))
            problems.append(f"Unknown environment variable {var}{hint}; ignored.")
        else:
            # QWEN_LSP_API_KEY comes after DASHSCOPE_API_KEY, so it wins.
            entries.append((field, var, env[var]))
    return entries


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/qwen-lsp/config.toml``, falling back to ``~/.config``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".config"
    return root / "qwen-lsp" / "config.toml"


def _read_config(path: Path, explicit: bool, problems: list[str]) -> dict[str, Any] | None:
    """Parse the TOML file; a missing default file is fine, anything else broken is a problem."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if explicit:
            problems.append(f"Config file {path} does not exist; it is ignored.")
        return None
    except (OSError, ValueError) as err:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        problems.append(f"Could not read config file {path}: {err}. The file is ignored.")
        return None


# ---------------------------------------------------------------------------
# Merging.
# ---------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_unset(raw: Any) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


class _Merger:
    """Applies layers in order and remembers where each current value came from."""

    def __init__(self, problems: list[str]) -> None:
        self.values: dict[str, Any] = dict(_DEFAULTS)
        self.origins: dict[str, str] = {}
        self.problems = problems

    def apply(self, entries: Iterable[_Entry], source: str) -> None:
        for field, label, raw in entries:
            if _is_unset(raw):
                continue
            rule = _RULES[field]
            if rule.auto_means_none and _auto_word(raw):
                self._set(field, None, source)
                continue
            try:
                value = rule.parse(raw)
            except _Invalid:
                self.problems.append(self._invalid_message(field, label, raw, source))
                continue
            self._set(field, value, source)

    def _set(self, field: str, value: Any, source: str) -> None:
        self.values[field] = value
        self.origins[field] = source

    def _invalid_message(self, field: str, label: str, raw: Any, source: str) -> str:
        shown = "the value (hidden)" if field == "api_key" else _show(raw)
        current = self.values[field]
        if field in self.origins:
            fallback = f"keeping {_display(field, current)} from {self.origins[field]}"
        else:
            fallback = f"using the default {_display(field, current)}"
        expected = _RULES[field].expected
        return f"Invalid {label} in {source}: {shown} is not allowed (expected {expected}); {fallback}."

    def reset(self, *fields: str) -> None:
        for field in fields:
            self.values[field] = _DEFAULTS[field]
            self.origins.pop(field, None)


def _display(field: str, value: Any) -> str:
    if field == "api_key":
        return repr(redact_key(value))
    if value is None:
        return '"auto"' if _RULES[field].auto_means_none else "none"
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


def local_engine_installed() -> bool:
    """True when the optional local engine (llama-cpp-python and the model parts) is importable."""
    from qwen_lsp.providers.local_model import local_engine_available

    return local_engine_available()


def load_settings(
    *,
    init_options: dict[str, Any] | None = None,
    workspace: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | Path | None = None,
    local_available: Callable[[], bool] | None = None,
) -> tuple[Settings, list[str]]:
    """Merge every layer into one :class:`Settings` plus the problems found on the way.

    ``env`` defaults to ``os.environ``; ``config_path`` to :func:`default_config_path`
    (a missing default file is silently skipped). ``local_available`` is asked only
    when the provider has to be guessed. Never raises on bad user input.
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    merger = _Merger(problems)

    path = Path(config_path).expanduser() if config_path is not None else default_config_path(env)
    source = f"config file {path}"
    merger.apply(
        _collect_mapping(_read_config(path, config_path is not None, problems), source, problems),
        source,
    )
    merger.apply(_collect_env(env, problems), "the environment")
    merger.apply(
        _collect_mapping(init_options, "initializationOptions", problems), "initializationOptions"
    )
    merger.apply(_collect_mapping(workspace, "workspace settings", problems), "workspace settings")

    _check_debounce_bounds(merger)
    values = merger.values
    if values["provider"] is None:
        values["provider"] = _guess_provider(values, local_available or local_engine_installed)
        if values["provider"] is None:
            problems.append(NO_BACKEND_MESSAGE)
    settings = Settings(**values)
    problems.extend(_consistency_problems(settings))
    return settings, problems


def _check_debounce_bounds(merger: _Merger) -> None:
    low, high = merger.values["debounce_min_ms"], merger.values["debounce_max_ms"]
    if low > high:
        merger.problems.append(
            f"debounceMinMs ({low}) is greater than debounceMaxMs ({high}); using the defaults "
            f"{_DEFAULTS['debounce_min_ms']} and {_DEFAULTS['debounce_max_ms']}."
        )
        merger.reset("debounce_min_ms", "debounce_max_ms")


def _guess_provider(values: Mapping[str, Any], local_available: Callable[[], bool]) -> str | None:
    # A key means DashScope; a bare baseUrl means "my own OpenAI-compatible server".
    if values["api_key"]:
        return "dashscope"
    if values["base_url"]:
        return "openai"
    return "local" if local_available() else None


def _consistency_problems(settings: Settings) -> list[str]:
    problems: list[str] = []
    if settings.mode == "fim" and settings._native_dashscope():
        problems.append(
            'mode "fim" is not possible with api "dashscope": the native DashScope endpoint has '
            'no fill-in-the-middle. Using "partial"; set api "openai" (region "cn") for FIM.'
        )
    if settings.provider == "dashscope" and not settings.api_key:
        problems.append(
            "provider is dashscope but no API key is set: export DASHSCOPE_API_KEY, "
            "or choose provider openai (with baseUrl) or local."
        )
    return problems
