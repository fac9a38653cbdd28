"""The local engine's speed, remembered between runs on the same machine."""

from __future__ import annotations

import json
from pathlib import Path

from qwen_lsp.speed_memory import load_speed, save_speed


def test_a_saved_speed_is_read_back_on_the_same_machine_only(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "engine-speed.json"
    assert load_speed(path) is None  # nothing measured yet
    save_speed(312.46, path)
    assert load_speed(path) == 312.5
    data = json.loads(path.read_text(encoding="utf-8"))
    data["machine"] = "another CPU"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert load_speed(path) is None


def test_an_unreadable_or_absurd_file_is_no_speed(tmp_path: Path) -> None:
    path = tmp_path / "engine-speed.json"
    path.write_text("{not json", encoding="utf-8")
    assert load_speed(path) is None
    save_speed(1e9, path)  # no CPU processes a billion prompt tokens a second
    assert load_speed(path) is None


def test_saving_into_a_place_that_cannot_be_written_is_harmless(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    save_speed(100.0, blocker / "sub" / "engine-speed.json")  # parent is a file
    assert blocker.read_text(encoding="utf-8") == "x"
