"""Tests for qwen_lsp.settings: layering, coercion, validation messages, resolution, redaction."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from qwen_lsp.settings import (
    DEFAULT_EXCLUDE,
    NO_BACKEND_MESSAGE,
    Settings,
    camel,
    default_config_path,
    load_settings,
    snake,
)

FAKE_KEY = "sk-ZZtestFAKEkey-7c1e55b0d2"
DEFAULTS = Settings()


def load(
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    toml: str | None = None,
    init: Any = None,
    workspace: Any = None,
    local: bool = False,
) -> tuple[Settings, list[str]]:
    """Load with an isolated environment and an optional config file under tmp_path."""
    full_env = {"XDG_CONFIG_HOME": str(tmp_path), **(env or {})}
    if toml is not None:
        path = tmp_path / "qwen-lsp" / "config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(toml, encoding="utf-8")
    return load_settings(
        init_options=init, workspace=workspace, env=full_env, local_available=lambda: local
    )


KEY_ENV = {"DASHSCOPE_API_KEY": FAKE_KEY}


# --- defaults and precedence -------------------------------------------------------------


def test_defaults_with_only_a_key(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env=KEY_ENV)
    assert problems == []
    assert s == dataclasses.replace(DEFAULTS, provider="dashscope", api_key=FAKE_KEY)
    assert s.exclude == DEFAULT_EXCLUDE


LAYERS = ("toml", "env", "init", "workspace")


def _layer_kwargs(layers: tuple[str, ...]) -> dict[str, Any]:
    kw: dict[str, Any] = {"env": dict(KEY_ENV)}
    for layer in layers:
        model = f"model-from-{layer}"
        if layer == "toml":
            kw["toml"] = f'model = "{model}"\nmaxTokens = 11\n'
        elif layer == "env":
            kw["env"].update(QWEN_LSP_MODEL=model, QWEN_LSP_MAX_TOKENS="22")
        elif layer == "init":
            kw["init"] = {"model": model, "maxTokens": 33}
        else:
            kw["workspace"] = {"model": model, "maxTokens": 44}
    return kw


@pytest.mark.parametrize(
    "layers",
    [combo for n in range(1, 5) for combo in itertools.combinations(LAYERS, n)],
    ids=lambda c: "+".join(c),
)
def test_highest_layer_wins(tmp_path: Path, layers: tuple[str, ...]) -> None:
    s, problems = load(tmp_path, **_layer_kwargs(layers))
    top = layers[-1]  # LAYERS is ordered lowest to highest and combinations keep order
    assert problems == []
    assert s.model == f"model-from-{top}"
    assert s.max_tokens == {"toml": 11, "env": 22, "init": 33, "workspace": 44}[top]


def test_qwen_lsp_api_key_beats_dashscope_api_key(tmp_path: Path) -> None:
    s, _ = load(tmp_path, env={"DASHSCOPE_API_KEY": "sk-lower", "QWEN_LSP_API_KEY": FAKE_KEY})
    assert s.api_key == FAKE_KEY


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_null_or_blank_does_not_clobber_lower_layer(tmp_path: Path, blank: Any) -> None:
    s, problems = load(
        tmp_path,
        env={**KEY_ENV, "QWEN_LSP_MODEL": "m-env"},
        workspace={"apiKey": blank, "model": blank},
    )
    assert (s.api_key, s.model) == (FAKE_KEY, "m-env")
    assert problems == []


def test_auto_resets_optional_fields(tmp_path: Path) -> None:
    s, problems = load(
        tmp_path,
        env={**KEY_ENV, "QWEN_LSP_DEBOUNCE_MS": "50", "QWEN_LSP_THREADS": "2"},
        init={"debounceMs": "auto", "threads": "AUTO"},
    )
    assert problems == []
    assert (s.debounce_ms, s.threads) == (None, None)


# --- environment coercion ----------------------------------------------------------------

ENV_CASES = [
    ("QWEN_LSP_DEBOUNCE_MS", "120", "debounce_ms", 120),
    ("QWEN_LSP_DEBOUNCE_MS", "auto", "debounce_ms", None),
    ("QWEN_LSP_TEMPERATURE", "0.25", "temperature", 0.25),
    ("QWEN_LSP_TEMPERATURE", "1", "temperature", 1.0),
    ("QWEN_LSP_MAX_TOKENS", " 256 ", "max_tokens", 256),
    ("QWEN_LSP_TIMEOUT_MS", "2_500", "timeout_ms", 2500),
    ("QWEN_LSP_CROSS_FILE", "false", "cross_file", False),
    ("QWEN_LSP_CROSS_FILE", "0", "cross_file", False),
    ("QWEN_LSP_RESPECT_GITIGNORE", "YES", "respect_gitignore", True),
    ("QWEN_LSP_RESPECT_GITIGNORE", "on", "respect_gitignore", True),
    ("QWEN_LSP_EXCLUDE", "*.log, build/ ,,", "exclude", ("*.log", "build/")),
    ("QWEN_LSP_STOP", '["\\n\\n", "a,b"]', "stop", ("\n\n", "a,b")),
    ("QWEN_LSP_STOP", "END,STOP", "stop", ("END", "STOP")),
    ("QWEN_LSP_MODE", "FIM", "mode", "fim"),
    ("QWEN_LSP_REGION", "Cn", "region", "cn"),
    ("QWEN_LSP_API", "DashScope", "api", "dashscope"),
    ("QWEN_LSP_PROVIDER", "OpenAI", "provider", "openai"),
    ("QWEN_LSP_MODEL", "qwen-coder-turbo", "model", "qwen-coder-turbo"),
    ("QWEN_LSP_BASE_URL", "http://127.0.0.1:8080/v1/", "base_url", "http://127.0.0.1:8080/v1/"),
    ("QWEN_LSP_LOG_LEVEL", "WARN", "log_level", "warning"),
    ("QWEN_LSP_LOG_LEVEL", "Debug", "log_level", "debug"),
    ("QWEN_LSP_MULTILINE", "never", "multiline", "never"),
    ("QWEN_LSP_THREADS", "4", "threads", 4),
    ("QWEN_LSP_CONTEXT_SIZE", "8192", "context_size", 8192),
    ("QWEN_LSP_CONTEXT_TOKENS", "256", "context_tokens", 256),
    ("QWEN_LSP_MAX_FILE_BYTES", "2048", "max_file_bytes", 2048),
    ("QWEN_LSP_DEBOUNCE_MIN_MS", "0", "debounce_min_ms", 0),
    ("QWEN_LSP_CONNECT_TIMEOUT_MS", "700", "connect_timeout_ms", 700),
    ("QWEN_LSP_ENABLED", "false", "enabled", False),
    ("QWEN_LSP_DISABLED_LANGUAGES", "markdown, plaintext", "disabled_languages",
     ("markdown", "plaintext")),
]


@pytest.mark.parametrize(("var", "raw", "field", "expected"), ENV_CASES)
def test_env_coercion(tmp_path: Path, var: str, raw: str, field: str, expected: Any) -> None:
    s, problems = load(tmp_path, env={**KEY_ENV, var: raw})
    assert problems == []
    value = getattr(s, field)
    assert value == expected
    assert type(value) is type(expected)


def test_env_model_path_expands_home(tmp_path: Path) -> None:
    s, _ = load(tmp_path, env={**KEY_ENV, "QWEN_LSP_MODEL_PATH": "~/models/q.gguf"})
    assert s.model_path == os.path.expanduser("~/models/q.gguf")
    assert not s.model_path.startswith("~")


def test_lsp_numbers_coerce_like_env(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init={"temperature": 1, "maxTokens": 64.0})
    assert problems == []
    assert (s.temperature, type(s.temperature)) == (1.0, float)
    assert (s.max_tokens, type(s.max_tokens)) == (64, int)


# --- invalid values ----------------------------------------------------------------------

INVALID_CASES = [
    ("maxTokens", 5000, "max_tokens"),
    ("maxTokens", 0, "max_tokens"),
    ("maxTokens", 12.5, "max_tokens"),
    ("maxTokens", True, "max_tokens"),
    ("temperature", 2.5, "temperature"),
    ("temperature", -0.1, "temperature"),
    ("temperature", "hot", "temperature"),
    ("timeoutMs", 0, "timeout_ms"),
    ("timeoutMs", -5, "timeout_ms"),
    ("connectTimeoutMs", 0, "connect_timeout_ms"),
    ("contextTokens", 100, "context_tokens"),
    ("debounceMs", -1, "debounce_ms"),
    ("debounceMinMs", -3, "debounce_min_ms"),
    ("threads", 0, "threads"),
    ("contextSize", 256, "context_size"),
    ("maxFileBytes", 0, "max_file_bytes"),
    ("mode", "magic", "mode"),
    ("region", "eu", "region"),
    ("api", "grpc", "api"),
    ("provider", "anthropic", "provider"),
    ("multiline", "sometimes", "multiline"),
    ("logLevel", "trace", "log_level"),
    ("crossFile", "maybe", "cross_file"),
    ("respectGitignore", 1, "respect_gitignore"),
    ("exclude", [1, 2], "exclude"),
    ("stop", {"a": 1}, "stop"),
    ("baseUrl", "ftp://example.com", "base_url"),
    ("baseUrl", "localhost:8080", "base_url"),
    ("model", 42, "model"),
    ("enabled", "nope", "enabled"),
    ("disabledLanguages", {"md": True}, "disabled_languages"),
]


@pytest.mark.parametrize(("key", "bad", "field"), INVALID_CASES)
def test_invalid_value_falls_back_to_default(
    tmp_path: Path, key: str, bad: Any, field: str
) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init={key: bad})
    assert getattr(s, field) == getattr(DEFAULTS, field) or field == "provider"
    assert len(problems) == 1
    message = problems[0]
    assert key in message
    assert repr(bad) in message
    assert "default" in message
    assert "expected" in message


def test_invalid_provider_still_auto_resolves(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init={"provider": "anthropic"})
    assert s.provider == "dashscope"
    assert len(problems) == 1 and "anthropic" in problems[0]


def test_invalid_env_value_names_the_variable(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env={**KEY_ENV, "QWEN_LSP_MAX_TOKENS": "lots"})
    assert s.max_tokens == DEFAULTS.max_tokens
    assert len(problems) == 1
    assert "QWEN_LSP_MAX_TOKENS" in problems[0] and "'lots'" in problems[0]
    assert "1 to 4096" in problems[0]


def test_invalid_value_keeps_lower_layer_value(tmp_path: Path) -> None:
    s, problems = load(
        tmp_path, env={**KEY_ENV, "QWEN_LSP_MAX_TOKENS": "77"}, workspace={"maxTokens": -1}
    )
    assert s.max_tokens == 77
    assert len(problems) == 1
    assert "77" in problems[0] and "environment" in problems[0]


def test_debounce_min_above_max_uses_both_defaults(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init={"debounceMinMs": 900, "debounceMaxMs": 100})
    assert (s.debounce_min_ms, s.debounce_max_ms) == (
        DEFAULTS.debounce_min_ms,
        DEFAULTS.debounce_max_ms,
    )
    assert len(problems) == 1 and "debounceMinMs" in problems[0]


@pytest.mark.parametrize("bad", [["a"], "nope", 3])
def test_non_object_options_are_a_problem_not_a_crash(tmp_path: Path, bad: Any) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init=bad)
    assert s.model == DEFAULTS.model
    assert len(problems) == 1 and "initializationOptions" in problems[0]


# --- unknown keys ------------------------------------------------------------------------


def test_unknown_key_is_reported_with_suggestion(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init={"maxToken": 5})
    assert s.max_tokens == DEFAULTS.max_tokens
    assert len(problems) == 1
    assert '"maxToken"' in problems[0] and '"maxTokens"' in problems[0]


def test_unknown_env_variable_is_reported(tmp_path: Path) -> None:
    _, problems = load(tmp_path, env={**KEY_ENV, "QWEN_LSP_MODLE": "x"})
    assert len(problems) == 1
    assert "QWEN_LSP_MODLE" in problems[0]


def test_unknown_key_inside_qwen_section_is_reported(tmp_path: Path) -> None:
    _, problems = load(tmp_path, env=KEY_ENV, workspace={"qwen": {"tempreature": 0.5}})
    assert len(problems) == 1 and "tempreature" in problems[0]


def test_foreign_sections_are_ignored(tmp_path: Path) -> None:
    s, problems = load(
        tmp_path,
        env=KEY_ENV,
        init={"qwen": {"model": "m"}, "pylsp": {"plugins": {"x": 1}}},
        toml='model = "t"\n[tool.other]\nfoo = 1\n',
    )
    assert problems == []
    assert s.model == "m"


def test_snake_and_camel_keys_both_accepted(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init={"max_tokens": 9, "contextSize": 1024})
    assert problems == []
    assert (s.max_tokens, s.context_size) == (9, 1024)


# --- config file -------------------------------------------------------------------------


def test_toml_qwen_table_overrides_top_level(tmp_path: Path) -> None:
    toml = 'model = "top"\nregion = "cn"\n[qwen]\nmodel = "table"\nexclude = ["*.x"]\n'
    s, problems = load(tmp_path, env=KEY_ENV, toml=toml)
    assert problems == []
    assert (s.model, s.region, s.exclude) == ("table", "cn", ("*.x",))


def test_bad_toml_is_a_problem_and_ignored(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, toml='model = "unterminated\n')
    assert s.model == DEFAULTS.model
    assert len(problems) == 1
    assert "config.toml" in problems[0]


def test_invalid_value_in_toml_names_the_file(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, toml="maxTokens = 0\n")
    assert s.max_tokens == DEFAULTS.max_tokens
    assert len(problems) == 1 and "config.toml" in problems[0] and "maxTokens" in problems[0]


def test_unreadable_config_is_a_problem(tmp_path: Path) -> None:
    folder = tmp_path / "is-a-dir.toml"
    folder.mkdir()
    s, problems = load_settings(env=KEY_ENV, config_path=folder, local_available=lambda: False)
    assert s.api_key == FAKE_KEY
    assert len(problems) == 1 and str(folder) in problems[0]


def test_explicit_missing_config_is_reported_default_missing_is_not(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    _, explicit = load_settings(env=KEY_ENV, config_path=missing, local_available=lambda: False)
    _, implicit = load(tmp_path, env=KEY_ENV)
    assert len(explicit) == 1 and str(missing) in explicit[0]
    assert implicit == []


def test_default_config_path_follows_xdg(tmp_path: Path) -> None:
    assert default_config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "qwen-lsp" / "config.toml"
    )
    assert default_config_path({}) == Path.home() / ".config" / "qwen-lsp" / "config.toml"


# --- LSP shapes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"model": "m", "mode": "partial"}, {"qwen": {"model": "m", "mode": "partial"}}],
    ids=["flat", "nested"],
)
def test_init_options_flat_and_nested(tmp_path: Path, options: dict[str, Any]) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init=options)
    assert problems == []
    assert (s.model, s.mode) == ("m", "partial")


def test_nested_section_beats_flat_keys(tmp_path: Path) -> None:
    s, _ = load(tmp_path, env=KEY_ENV, init={"model": "flat", "qwen": {"model": "nested"}})
    assert s.model == "nested"


@pytest.mark.parametrize(
    "section",
    [{"temperature": 0.4}, {"qwen": {"temperature": 0.4}}],
    ids=["section-contents", "wrapped"],
)
def test_workspace_section_qwen(tmp_path: Path, section: dict[str, Any]) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init={"temperature": 0.9}, workspace=section)
    assert problems == []
    assert s.temperature == 0.4


# --- provider resolution -----------------------------------------------------------------


def test_provider_dashscope_when_key_set_and_local_not_probed(tmp_path: Path) -> None:
    calls: list[int] = []

    def probe() -> bool:
        calls.append(1)
        return True

    s, problems = load_settings(
        env={**KEY_ENV, "XDG_CONFIG_HOME": str(tmp_path)}, local_available=probe
    )
    assert s.provider == "dashscope"
    assert problems == []
    assert calls == []


def test_provider_local_when_engine_available(tmp_path: Path) -> None:
    s, problems = load(tmp_path, local=True)
    assert s.provider == "local"
    assert problems == []


def test_provider_none_with_setup_message(tmp_path: Path) -> None:
    s, problems = load(tmp_path, local=False)
    assert s.provider is None
    assert problems == [NO_BACKEND_MESSAGE]
    assert 'pip install -e ".[local]"' in NO_BACKEND_MESSAGE


def test_provider_openai_when_only_base_url(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env={"QWEN_LSP_BASE_URL": "http://127.0.0.1:9/v1"}, local=True)
    assert s.provider == "openai"
    assert problems == []


def test_explicit_provider_wins_over_key(tmp_path: Path) -> None:
    s, _ = load(tmp_path, env={**KEY_ENV, "QWEN_LSP_PROVIDER": "local"})
    assert s.provider == "local"


def test_provider_auto_in_higher_layer_reresolves(tmp_path: Path) -> None:
    s, _ = load(tmp_path, env={**KEY_ENV, "QWEN_LSP_PROVIDER": "local"}, init={"provider": "auto"})
    assert s.provider == "dashscope"


def test_dashscope_without_key_is_reported(tmp_path: Path) -> None:
    s, problems = load(tmp_path, init={"provider": "dashscope"})
    assert s.provider == "dashscope"
    assert len(problems) == 1 and "DASHSCOPE_API_KEY" in problems[0]


# --- base URL and mode -------------------------------------------------------------------

URL_CASES = [
    ("openai", "intl", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"),
    ("openai", "cn", "https://dashscope.aliyuncs.com/compatible-mode/v1"),
    ("dashscope", "intl", "https://dashscope-intl.aliyuncs.com/api/v1"),
    ("dashscope", "cn", "https://dashscope.aliyuncs.com/api/v1"),
]


@pytest.mark.parametrize(("api", "region", "url"), URL_CASES)
def test_resolved_base_url_per_api_and_region(api: str, region: str, url: str) -> None:
    s = Settings(provider="dashscope", api=api, region=region)
    assert s.resolved_base_url() == url
    override = s.with_overrides(base_url="http://127.0.0.1:8080/v1//")
    assert override.resolved_base_url() == "http://127.0.0.1:8080/v1"


@pytest.mark.parametrize(("settings", "local"), [
    (Settings(provider="local"), True),
    (Settings(provider="openai", base_url="http://127.0.0.1:8000/v1"), True),
    (Settings(provider="openai", base_url="http://localhost:8000/v1"), True),
    (Settings(provider="openai", base_url="http://[::1]:8000/v1"), True),
    (Settings(provider="openai", base_url="http://gpu-box.internal:8000/v1"), False),
    (Settings(provider="dashscope"), False),
])
def test_upstream_is_local(settings: Settings, local: bool) -> None:
    assert settings.upstream_is_local() is local


def test_resolved_base_url_local() -> None:
    local = Settings(provider="local")
    assert local.resolved_base_url() is None
    assert local.with_overrides(base_url="http://127.0.0.1:5/v1/").resolved_base_url() == (
        "http://127.0.0.1:5/v1"
    )


MODE_CASES = [
    # provider, api, region, model, mode, expected
    ("openai", "openai", "intl", "anything", "auto", "fim"),
    ("local", "openai", "intl", "qwen2.5-coder-1.5b", "auto", "fim"),
    ("local", "dashscope", "cn", "x", "auto", "fim"),
    ("dashscope", "openai", "cn", "qwen2.5-coder-32b-instruct", "auto", "fim"),
    ("dashscope", "openai", "cn", "qwen2.5-coder-0.5b-instruct", "auto", "fim"),
    ("dashscope", "openai", "cn", "qwen-coder-turbo", "auto", "fim"),
    ("dashscope", "openai", "cn", "qwen-coder-turbo-latest", "auto", "fim"),
    ("dashscope", "openai", "cn", "qwen-coder-turbo-0919", "auto", "fim"),
    ("dashscope", "openai", "intl", "qwen2.5-coder-32b-instruct", "auto", "partial"),
    ("dashscope", "dashscope", "cn", "qwen2.5-coder-32b-instruct", "auto", "partial"),
    ("dashscope", "openai", "cn", "qwen3-coder-flash", "auto", "partial"),
    ("dashscope", "openai", "cn", "qwen2.5-coder-32b", "auto", "partial"),
    ("dashscope", "openai", "intl", "qwen3-coder-flash", "auto", "partial"),
    (None, "openai", "cn", "qwen-coder-turbo", "auto", "partial"),
    ("dashscope", "openai", "intl", "qwen3-coder-flash", "fim", "fim"),
    ("dashscope", "dashscope", "cn", "qwen-coder-turbo", "fim", "partial"),
    ("openai", "openai", "intl", "x", "partial", "partial"),
    ("local", "openai", "intl", "x", "partial", "partial"),
]


@pytest.mark.parametrize(("provider", "api", "region", "model", "mode", "expected"), MODE_CASES)
def test_effective_mode_matrix(
    provider: str | None, api: str, region: str, model: str, mode: str, expected: str
) -> None:
    s = Settings(provider=provider, api=api, region=region, model=model, mode=mode)
    assert s.effective_mode() == expected


def test_fim_with_native_api_is_reported(tmp_path: Path) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init={"mode": "fim", "api": "dashscope"})
    assert s.mode == "fim" and s.effective_mode() == "partial"
    assert len(problems) == 1 and "fim" in problems[0] and "dashscope" in problems[0]


# --- redaction ---------------------------------------------------------------------------


def test_repr_and_str_redact_key() -> None:
    s = Settings(provider="dashscope", api_key=FAKE_KEY)
    for text in (repr(s), str(s), f"{s}", repr([s])):
        assert FAKE_KEY not in text
        assert FAKE_KEY[3:] not in text
        assert "redacted" in text


def test_redacted_dict_is_json_safe_camel_and_secret_free() -> None:
    s = Settings(provider="dashscope", api_key=FAKE_KEY, stop=("\n",))
    data = s.redacted_dict()
    text = json.dumps(data)
    assert FAKE_KEY[3:] not in text
    assert set(data) == {camel(f.name) for f in dataclasses.fields(Settings)}
    assert data["maxTokens"] == s.max_tokens and data["stop"] == ["\n"]
    assert data["apiKey"] is not None
    assert Settings().redacted_dict()["apiKey"] is None


@pytest.mark.parametrize(
    "options",
    [{"apiKey": [FAKE_KEY]}, {"apiKeyy": FAKE_KEY}, {"qwen": {"api-key": {"v": FAKE_KEY}}}],
    ids=["invalid-type", "unknown-key", "nested-invalid"],
)
def test_problems_never_contain_key(tmp_path: Path, options: dict[str, Any]) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init=options)
    assert problems, "each case is malformed and must be reported"
    assert s.api_key == FAKE_KEY
    assert all(FAKE_KEY[3:] not in p for p in problems)


# --- helpers and record behaviour --------------------------------------------------------


@pytest.mark.parametrize(
    ("snake_name", "camel_name"),
    [
        ("max_tokens", "maxTokens"),
        ("base_url", "baseUrl"),
        ("connect_timeout_ms", "connectTimeoutMs"),
        ("model", "model"),
    ],
)
def test_camel_snake_round_trip(snake_name: str, camel_name: str) -> None:
    assert camel(snake_name) == camel_name
    assert snake(camel_name) == snake_name


def test_snake_keeps_acronyms_together() -> None:
    assert snake("baseURL") == "base_url"


def test_with_overrides_copies_and_settings_are_frozen() -> None:
    s = Settings()
    t = s.with_overrides(model="other", max_tokens=5)
    assert (t.model, t.max_tokens) == ("other", 5)
    assert s.model == DEFAULTS.model
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.model = "x"  # type: ignore[misc]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_keys = st.sampled_from(
    [camel(f.name) for f in dataclasses.fields(Settings)] + ["qwen", "other", "maxToken"]
)


@hyp_settings(max_examples=150, deadline=None)
@given(init=st.dictionaries(_keys, _json, max_size=6), workspace=_json)
def test_load_never_raises(init: dict[str, Any], workspace: Any) -> None:
    s, problems = load_settings(
        init_options=init,
        workspace=workspace,
        env={"XDG_CONFIG_HOME": "/nonexistent-qwen-lsp-test"},
        local_available=lambda: False,
    )
    assert isinstance(s, Settings)
    assert all(isinstance(p, str) for p in problems)
    assert 1 <= s.max_tokens <= 4096 and 0.0 <= s.temperature <= 2.0


# --- context cache, prices, token budget -------------------------------------------------


@pytest.mark.parametrize(("provider", "model", "mode", "setting", "expected"), [
    ("dashscope", "qwen3-coder-flash", "auto", "auto", "policy"),
    ("dashscope", "qwen3-coder-plus-2025-07-22", "partial", "auto", "policy"),
    ("dashscope", "qwen-plus", "auto", "auto", "implicit"),  # no explicit cache documented
    ("openai", "qwen3-coder-flash", "partial", "auto", "implicit"),  # not DashScope
    ("openai", "x", "partial", "explicit", "explicit"),  # the user's choice
    ("dashscope", "qwen3-coder-flash", "auto", "implicit", "implicit"),
    ("openai", "x", "fim", "explicit", "implicit"),  # FIM has no content blocks
])
def test_context_cache_mode(provider: str, model: str, mode: str, setting: str,
                            expected: str) -> None:
    s = Settings(provider=provider, model=model, mode=mode, context_cache=setting)
    assert s.context_cache_mode() == expected


def test_prices_and_budget_from_every_layer(tmp_path: Path) -> None:
    s, problems = load(
        tmp_path,
        env={**KEY_ENV, "QWEN_LSP_PRICES": '{"qwen3-coder-flash": {"input": 2, "output": 8}}',
             "QWEN_LSP_MAX_TOKENS_PER_MINUTE": "20000"},
        init={"contextCache": "EXPLICIT"},
    )
    assert problems == []
    assert s.context_cache == "explicit" and s.max_tokens_per_minute == 20000
    assert s.prices[0][0] == "qwen3-coder-flash" and s.prices[0][1].tiers[0].input == 2.0
    data = s.redacted_dict()
    json.dumps(data)
    assert data["prices"]["qwen3-coder-flash"]["tiers"][0] == {"upTo": None, "input": 2.0,
                                                               "output": 8.0}


@pytest.mark.parametrize(("key", "value"), [
    ("contextCache", "always"), ("prices", {"m": {"input": -1, "output": 1}}),
    ("prices", "not json"), ("maxTokensPerMinute", -5), ("maxTokensPerMinute", "lots"),
])
def test_bad_cost_settings_are_reported(tmp_path: Path, key: str, value: Any) -> None:
    s, problems = load(tmp_path, env=KEY_ENV, init={key: value})
    assert len(problems) == 1 and key in problems[0] and "expected" in problems[0]
    assert s == load(tmp_path, env=KEY_ENV)[0]
