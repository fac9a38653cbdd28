#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine:
# the package with its local engine and test extras, the editors the
# real-client tests drive, the VS Code client stack for the node test, and
# code-server with chromium for the real VS Code test.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v emacs >/dev/null 2>&1 || need_apt+=(emacs-nox)
[ -d /usr/share/emacs/site-lisp/elpa-src ] && ls /usr/share/emacs/site-lisp/elpa-src 2>/dev/null | grep -q '^eglot' || need_apt+=(elpa-eglot)
[ -x /usr/bin/nvim ] || need_apt+=(neovim)  # Debian's 0.7.2; the pip wheel brings 0.12
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)  # the terminal of test_neovim_terminal.py
# llama-cpp-python (the local extra) is compiled on install.
command -v c++ >/dev/null 2>&1 || need_apt+=(build-essential)
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# llama-cpp-python builds from source (about 12 minutes on 2 cores the first
# time; pip caches the wheel afterwards).
python3 -m pip install -q -e ".[local,test]"

if [ -f editors/vscode/package.json ] && command -v npm >/dev/null 2>&1; then
  (cd editors/vscode && npm ci --no-audit --no-fund --loglevel=error)
  # The real VS Code (code-server) and the browser that drives it.
  ./scripts/install-code-server.sh
fi
