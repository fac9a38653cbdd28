#!/usr/bin/env bash
# Install the real VS Code that tests/editors/test_vscode_real.py drives:
# code-server (VS Code packaged for the browser) from npm, Debian's chromium and
# chromium-driver (and an emoji font for the screenshots), and the packages its
# native modules build from.
#
# Idempotent: code-server goes into a fixed directory (QWEN_LSP_CODE_SERVER_DIR) and the
# step is skipped when a finished install is there. Only the npm and Debian
# registries are used: code-server's own postinstall would download ripgrep
# from a code host, so it is replaced by the steps below (Debian's rg instead).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.100.3  # bundles VS Code 1.100.3; the newest release that runs on node 20
VSCE_VERSION=3.9.2
DIR="${QWEN_LSP_CODE_SERVER_DIR:-/opt/qwen-lsp/code-server-$VERSION}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=()
for pkg in chromium chromium-driver build-essential pkg-config libkrb5-dev libxkbfile-dev \
           libsecret-1-dev ripgrep fonts-noto-color-emoji; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

if [ -f "$DIR/.installed" ]; then
  exit 0
fi

# node-pty's install script runs "npx node-gyp", which would wait at npx's
# prompt; native builds use the Debian nodejs package's headers.
export npm_config_yes=true npm_config_nodedir=/usr npm_config_unsafe_perm=true
export npm_config_audit=false npm_config_fund=false npm_config_loglevel=error
export npm_config_update_notifier=false

$SUDO mkdir -p "$DIR"
[ -w "$DIR" ] || $SUDO chown "$(id -u):$(id -g)" "$DIR"
rm -rf "${DIR:?}/node_modules" "$DIR/vsce" "$DIR/package.json" "$DIR/package-lock.json"
(
  cd "$DIR"
  echo '{"name": "qwen-lsp-code-server", "private": true}' > package.json
  npm install --ignore-scripts "code-server@$VERSION" >/dev/null
  # The only native module at this level (its prebuilt download fails here, so
  # it builds from source). A bare "npm rebuild" would also run code-server's
  # postinstall, which the steps below replace.
  npm rebuild argon2 >/dev/null

  cd node_modules/code-server/lib/vscode
  npm install --omit=dev --ignore-scripts >/dev/null
  # An existing bin/ makes @vscode/ripgrep's postinstall skip its download.
  find node_modules -type d -path '*/@vscode/ripgrep' | while read -r rg_dir; do
    mkdir -p "$rg_dir/bin"
    ln -sf "$(command -v rg)" "$rg_dir/bin/rg"
  done
  npm rebuild >/dev/null  # node-pty, spdlog, kerberos, native-watchdog, …
  ln -sfn node_modules node_modules.asar
  ln -sfn code-linux.sh bin/remote-cli/code-server
  ln -sfn browser-linux.sh bin/helpers/browser.sh
  (cd extensions && npm install --omit=dev >/dev/null)
)
# vsce packages the extension (editors/vscode's README uses it through npx).
mkdir -p "$DIR/vsce"
(cd "$DIR/vsce" && echo '{"name": "qwen-lsp-vsce", "private": true}' > package.json \
  && npm install "@vscode/vsce@$VSCE_VERSION" >/dev/null)
"$DIR/node_modules/.bin/code-server" --version >/dev/null
"$DIR/vsce/node_modules/.bin/vsce" --version >/dev/null
touch "$DIR/.installed"
