"""A real VS Code for the tests: code-server in headless Chromium, driven by Selenium.

code-server is VS Code's workbench, extension host and editor served to a
browser. :class:`CodeServer` installs the packaged extension into private
user-data and extensions directories and runs code-server in its own process
group (it keeps extension hosts, and with them the language server, alive
after the browser goes). :class:`Workbench` is the page, used the way a person
uses it: key presses into the editor and the command palette, reading what is
drawn.

scripts/install-code-server.sh installs code-server into
``QWEN_LSP_CODE_SERVER_DIR`` (default below) and chromium + chromium-driver
from Debian.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

CODE_SERVER_VERSION = "4.100.3"
CODE_SERVER_DIR = Path(os.environ.get(
    "QWEN_LSP_CODE_SERVER_DIR", f"/opt/qwen-lsp/code-server-{CODE_SERVER_VERSION}"))
CODE_SERVER = CODE_SERVER_DIR / "node_modules" / ".bin" / "code-server"
VSCE = CODE_SERVER_DIR / "vsce" / "node_modules" / ".bin" / "vsce"
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/lib/chromium/chromium")

T = TypeVar("T")


def missing() -> str | None:
    """Why the real VS Code test cannot run here, or None."""
    for path, what in ((CODE_SERVER, "code-server"), (VSCE, "vsce"),
                       (CHROMEDRIVER, "chromium-driver"), (CHROMIUM, "chromium")):
        if not path.exists():
            return f"{what} is not installed ({path}); run scripts/install-dev.sh"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed (pip install -e ".[test]")'
    if shutil.which("node") is None:
        return "node is not installed"
    return None


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0,
             interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the page is redrawn under us
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def package_extension(source: Path, out: Path, env: dict[str, str]) -> Path:
    """Compile the extension and package it with vsce, as the README says."""
    for argv in (["npx", "--no-install", "tsc", "-p", "."],
                 [str(VSCE), "package", "--skip-license", "--allow-missing-repository",
                  "-o", str(out)]):
        proc = subprocess.run(argv, cwd=source, env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, f"{argv[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return out


class CodeServer:
    """One code-server with private settings, extensions and a workspace folder."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base = base
        self.user_data = base / "user-data"
        self.extensions = base / "extensions"
        self.settings_file = self.user_data / "User" / "settings.json"
        self.log_file = base / "code-server.log"
        self.port = free_port()
        self.env = dict(env)
        for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
            path = base / name.lower()
            path.mkdir(parents=True, exist_ok=True)
            self.env[name] = str(path)
        self.proc: subprocess.Popen[bytes] | None = None

    def _common(self) -> list[str]:
        return ["--user-data-dir", str(self.user_data), "--extensions-dir", str(self.extensions)]

    def install_extension(self, vsix: Path) -> None:
        proc = subprocess.run(
            [str(CODE_SERVER), *self._common(), "--install-extension", str(vsix)],
            env=self.env, capture_output=True, text=True, timeout=180,
            stdin=subprocess.DEVNULL, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def write_settings(self, settings: dict[str, Any]) -> None:
        """Write User/settings.json before the start (later changes: add_user_settings)."""
        self.settings_file.parent.mkdir(parents=True, exist_ok=True)
        # In place, as an editor saves it: a rename would end the watch on the file.
        self.settings_file.write_text(json.dumps(settings, indent=2, ensure_ascii=False),
                                      encoding="utf-8")

    def read_settings(self) -> dict[str, Any]:
        return json.loads(self.settings_file.read_text(encoding="utf-8"))

    def start(self, folder: Path) -> None:
        config = self.base / "code-server.yaml"
        config.write_text(f"bind-addr: 127.0.0.1:{self.port}\nauth: none\ncert: false\n",
                          encoding="utf-8")
        with self.log_file.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(CODE_SERVER), "--config", str(config), *self._common(),
                 "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
                 "--disable-getting-started-override", str(folder)],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_for("code-server to answer /healthz", self._healthy, timeout=60)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"code-server exited: {self.log_file.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    def url(self, folder: Path) -> str:
        return f"http://127.0.0.1:{self.port}/?folder={folder}"

    def stop(self) -> None:
        """End code-server with everything it started (extension hosts, servers)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(grace)
                # The group may outlive its leader for a moment.
                os.killpg(proc.pid, 0)
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
            time.sleep(0.2)


class Workbench:
    """The VS Code page in headless Chromium."""

    def __init__(self, url: str, artifacts: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--window-size=1280,800", "--no-first-run",
                    "--disable-extensions", "--lang=en-US"):
            options.add_argument(arg)
        self.artifacts = artifacts
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.driver.get(url)
        wait_for("the workbench to be drawn", lambda: self.find(".monaco-workbench .part.editor"),
                 timeout=90)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the browser may already be gone
            self.driver.quit()

    # -- reading the page --------------------------------------------------------
    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def find_visible(self, css: str) -> Any:
        """The first element matching ``css`` that is displayed, or None."""
        return next((e for e in self.find_all(css) if e.is_displayed()), None)

    def quick_input(self) -> Any:
        """The input box of the command palette / Quick Open, once it is shown and focused."""
        box = self.find_visible(".quick-input-widget input")
        focused = box is not None and self.driver.execute_script(
            "return document.activeElement === arguments[0];", box)
        return box if focused else None

    def quick_choice(self) -> str:
        """The text of the row Enter would pick in the palette / Quick Open."""
        return "".join(self.texts(".quick-input-widget:not([style*='display: none']) "
                                  ".quick-input-list .monaco-list-row.focused"))

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def texts(self, css: str) -> list[str]:
        """The text content of every element matching ``css`` (hidden ones too)."""
        return list(self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".map(e => e.textContent);", css))

    def ghost_text(self) -> str:
        """Inline ghost text and the extra lines of a multi-line one (a view zone)."""
        return "".join(self.texts(".monaco-editor .ghost-text-decoration, "
                                  ".monaco-editor .ghost-text-decoration-preview, "
                                  ".monaco-editor .ghost-text"))

    def qwen_status(self) -> tuple[str, str] | None:
        """(codicon name, tooltip) of the "Qwen" status bar item."""
        return self.driver.execute_script("""
            for (const item of document.querySelectorAll('.statusbar-item')) {
              if (!item.textContent.includes('Qwen')) continue;
              const icon = item.querySelector('.codicon');
              const name = icon ? Array.from(icon.classList).find(
                  c => c.startsWith('codicon-') && c !== 'codicon-modifier') : '';
              const label = item.querySelector('a') || item;
              return [name || '', label.getAttribute('aria-label') || ''];
            }
            return null;""")

    def notifications(self) -> list[str]:
        """Every notification in the notification center (toasts included)."""
        self.command("Notifications: Show Notifications")
        wait_for("the notification center", lambda: self.find(".notifications-center.visible"),
                 timeout=10)
        found = self.texts(".notifications-center .notification-list-item-message")
        from selenium.webdriver.common.keys import Keys

        self.keys(Keys.ESCAPE)
        wait_for("the notification center to close",
                 lambda: not self.find(".notifications-center.visible"), timeout=10)
        return found

    def screenshot(self, name: str) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    # -- acting like a person ----------------------------------------------------------
    def keys(self, *keys: str, pause: float = 0.05) -> None:
        """Press keys one after another into whatever has the focus."""
        from selenium.webdriver.common.action_chains import ActionChains

        chain = ActionChains(self.driver)
        for key in keys:
            chain.send_keys(key).pause(pause)
        chain.perform()

    def chord(self, *modifiers_and_key: str) -> None:
        from selenium.webdriver.common.action_chains import ActionChains

        *mods, key = modifiers_and_key
        chain = ActionChains(self.driver)
        for mod in mods:
            chain.key_down(mod)
        chain.send_keys(key)
        for mod in reversed(mods):
            chain.key_up(mod)
        chain.perform()

    def type_text(self, text: str, pause: float = 0.08) -> None:
        """Type ``text`` one character at a time, as a person does."""
        self.keys(*text, pause=pause)

    def command(self, title: str) -> None:
        """Run a command from the command palette (F1, its title, Enter)."""
        from selenium.webdriver.common.keys import Keys

        self.keys(Keys.ESCAPE)
        self.keys(Keys.F1)
        box = wait_for("the command palette", self.quick_input, timeout=30)
        box.send_keys(title)
        wait_for(f"command {title!r} chosen in the palette",
                 lambda: title in self.quick_choice(), timeout=30)
        box.send_keys(Keys.ENTER)
        wait_for("the palette to close", lambda: self.quick_input() is None, timeout=30)

    def open_file(self, name: str) -> None:
        """Quick Open (Ctrl+P) the file and wait for its editor tab."""
        from selenium.webdriver.common.keys import Keys

        self.keys(Keys.ESCAPE)
        self.chord(Keys.CONTROL, "p")
        box = wait_for("quick open", self.quick_input, timeout=30)
        box.send_keys(name)
        wait_for(f"{name} chosen in quick open", lambda: name in self.quick_choice(), timeout=30)
        box.send_keys(Keys.ENTER)
        wait_for(f"the editor of {name}", lambda: any(
            name in t for t in self.texts(".tabs-container .tab.active")), timeout=30)
        wait_for("the editor to have the focus", lambda: self.driver.execute_script(
            "return !!document.activeElement.closest('.monaco-editor')"), timeout=10)

    def add_user_settings(self, text: str, settings_file: Path) -> None:
        """Add ``text`` (``, "key": value`` pairs) to settings.json in VS Code, and save.

        Opened with "Preferences: Open User Settings (JSON)" and typed before
        the closing brace, so VS Code itself writes the file and reloads it
        (a write from outside reaches its file watcher but, under code-server,
        not the settings).
        """
        from selenium.webdriver.common.keys import Keys

        self.command("Preferences: Open User Settings (JSON)")
        wait_for("settings.json in the editor", lambda: any(
            "settings.json" in t for t in self.texts(".tabs-container .tab.active")), timeout=15)
        wait_for("the editor to have the focus", lambda: self.driver.execute_script(
            "return !!document.activeElement.closest('.monaco-editor')"), timeout=10)
        self.chord(Keys.CONTROL, Keys.END)
        self.keys(Keys.HOME)
        self.type_text(text, pause=0.02)
        self.chord(Keys.CONTROL, "s")
        wait_for("settings.json to be saved",
                 lambda: text in settings_file.read_text(encoding="utf-8"), timeout=15)
        self.command("View: Close All Editors")

    def go_to_end_of_line(self, line: int) -> None:
        """Ctrl+Home, Down ``line`` times, End (``line`` is 0-based)."""
        from selenium.webdriver.common.keys import Keys

        self.chord(Keys.CONTROL, Keys.HOME)
        self.keys(*([Keys.DOWN] * line), Keys.END)
