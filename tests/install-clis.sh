#!/usr/bin/env bash
# Install the test world's tools into ${CLINVK_TEST_CACHE:-<repo>/.test-cache}:
#   npm/   the real CLIs (claude, codex, gemini, copilot, opencode) at the versions pinned in tests/cli-versions.env
#   node-clients/  the Node clients of tests/node-clients (npm ci from its lock file)
#   venv/  a Python venv with the exact packages of tests/requirements.txt
# Idempotent: each part is skipped when already installed as pinned.
# Needs only node/npm and python3 (on Debian without python3-venv it installs that
# package with apt-get when running as root).
set -euo pipefail

TESTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$TESTS_DIR/.." && pwd)"
CACHE="${CLINVK_TEST_CACHE:-$REPO/.test-cache}"
NPM_DIR="$CACHE/npm"
VENV="$CACHE/venv"
REQS="$TESTS_DIR/requirements.txt"
REQS_NODEPS="$TESTS_DIR/requirements-nodeps.txt"

# shellcheck source=cli-versions.env
source "$TESTS_DIR/cli-versions.env"
PKGS=(
  "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION"
  "@openai/codex@$CODEX_VERSION"
  "@google/gemini-cli@$GEMINI_CLI_VERSION"
  "@github/copilot@$COPILOT_VERSION"
  "opencode-ai@$OPENCODE_VERSION"
)

say() { printf 'install-clis: %s\n' "$*"; }

mkdir -p "$CACHE"
# The cache is big (about 1 GB): keep it out of git whatever the repo's .gitignore says.
[ -f "$CACHE/.gitignore" ] || printf '*\n' > "$CACHE/.gitignore"

# ---- CLIs -------------------------------------------------------------------
installed_version() { # $1 = package name; prints the installed version or nothing
  local pj="$NPM_DIR/node_modules/$1/package.json"
  [ -f "$pj" ] && node -e 'process.stdout.write(require(process.argv[1]).version)' "$pj" 2>/dev/null || true
}

missing=()
for spec in "${PKGS[@]}"; do
  name="${spec%@*}" want="${spec##*@}"
  have="$(installed_version "$name")"
  if [ "$have" != "$want" ]; then
    missing+=("$spec")
    say "npm: $name wanted $want, found ${have:-nothing}"
  fi
done
for bin in claude codex gemini copilot opencode; do
  if [ ! -e "$NPM_DIR/node_modules/.bin/$bin" ] && [ ${#missing[@]} -eq 0 ]; then
    say "npm: node_modules/.bin/$bin is missing"
    missing=("${PKGS[@]}")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  say "npm: claude-code $CLAUDE_CODE_VERSION, codex $CODEX_VERSION, gemini-cli $GEMINI_CLI_VERSION, copilot $COPILOT_VERSION, opencode-ai $OPENCODE_VERSION already installed in $NPM_DIR"
else
  mkdir -p "$NPM_DIR"
  [ -f "$NPM_DIR/package.json" ] || printf '{"name":"clinvk-test-clis","private":true}\n' > "$NPM_DIR/package.json"
  say "npm: installing ${PKGS[*]} into $NPM_DIR"
  start=$SECONDS
  # All at once so npm resolves one consistent tree. claude-code declares
  # node>=22 but its native binary runs on node 20 (EBADENGINE is only a warning).
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --loglevel=error "${PKGS[@]}")
  for spec in "${PKGS[@]}"; do
    name="${spec%@*}" want="${spec##*@}"
    have="$(installed_version "$name")"
    [ "$have" = "$want" ] || { say "npm: $name is ${have:-missing} after install, wanted $want"; exit 1; }
  done
  say "npm: done in $((SECONDS - start)) s"
fi
# copilot unpacks its runtime (235 MB) into $XDG_CACHE_HOME/copilot on its first start: once
# here, into the cache the tests share (tests/fakemodel/cli_env.py), not per test HOME.
warm_home="$(mktemp -d)"
for bin in claude codex copilot opencode; do
  HOME="$warm_home" XDG_CACHE_HOME="$CACHE/xdg-cache" "$NPM_DIR/node_modules/.bin/$bin" --version >/dev/null \
    || { say "$bin --version failed"; rm -rf "$warm_home"; exit 1; }
done
rm -rf "$warm_home"

# ---- Node clients (tests/node-clients: the Vercel AI SDK, pinned by its lock file) ----
NODE_CLIENTS="$CACHE/node-clients"
node_stamp="$(cat "$TESTS_DIR/node-clients/package.json" "$TESTS_DIR/node-clients/package-lock.json" | sha256sum | cut -d' ' -f1)"
if [ -f "$NODE_CLIENTS/.clinvk-lock.sha256" ] && [ "$(cat "$NODE_CLIENTS/.clinvk-lock.sha256")" = "$node_stamp" ]; then
  say "node clients: $NODE_CLIENTS already matches tests/node-clients"
else
  start=$SECONDS
  mkdir -p "$NODE_CLIENTS"
  cp "$TESTS_DIR/node-clients/package.json" "$TESTS_DIR/node-clients/package-lock.json" "$NODE_CLIENTS/"
  (cd "$NODE_CLIENTS" && npm ci --no-audit --no-fund --loglevel=error)
  printf '%s\n' "$node_stamp" > "$NODE_CLIENTS/.clinvk-lock.sha256"
  say "node clients: installed in $((SECONDS - start)) s"
fi

# ---- Python venv ---------------------------------------------------------------
PY="${PYTHON:-python3}"
stamp_value="$( { cat "$REQS" "$REQS_NODEPS"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
stamp_file="$VENV/.clinvk-requirements.sha256"

if [ -x "$VENV/bin/python" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_value" ]; then
  say "venv: $VENV already matches tests/requirements.txt"
else
  start=$SECONDS
  py_id='import sys; print(sys.version)'
  if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c "$py_id" 2>/dev/null)" != "$("$PY" -c "$py_id")" ]; then
    say "venv: $VENV was made by another python; recreating it"
    rm -rf "$VENV"
  fi
  if [ ! -x "$VENV/bin/pip" ]; then
    rm -rf "$VENV"
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
      # Debian ships venv/ensurepip separately.
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        pyver="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        say "venv: python3 -m venv failed; installing python${pyver}-venv with apt-get"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${pyver}-venv" >/dev/null \
          || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$VENV"
        "$PY" -m venv "$VENV"
      else
        say "venv: '$PY -m venv' failed (install python3-venv)"; exit 1
      fi
    fi
  fi
  say "venv: installing tests/requirements.txt into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQS"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$REQS_NODEPS"
  printf '%s\n' "$stamp_value" > "$stamp_file"
  say "venv: done in $((SECONDS - start)) s"
fi

say "ready: CLIs in $NPM_DIR/node_modules/.bin, python in $VENV/bin/python"
