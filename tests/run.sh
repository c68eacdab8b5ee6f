#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what it needs (pinned CLIs, a Python
# venv with the official SDKs, Debian tools), builds once, then runs the Rust tests and the
# black-box suite against the real CLIs and the fake model server. Exits non-zero on any failure.
#
# Environment: CLINVK_TEST_CACHE (default <repo>/.test-cache) holds the npm and pip installs,
# reused by later runs. PYTEST_ARGS adds pytest arguments (e.g. "-k daemon"; "-n 0" runs the
# black-box tests one at a time), PYTEST_WORKERS sets how many run at once (default 3).
# The last stage builds the .deb (cargo-deb, release build), installs it with dpkg, checks it and
# removes it: it needs root; CLINVK_SKIP_DEB_CHECK=1 skips it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$SECONDS
step() { printf '\n==> %s (%ds)\n' "$*" "$((SECONDS - start))"; }

step "system packages"
need=()
command -v setpriv >/dev/null || need+=(util-linux)
command -v systemd-socket-activate >/dev/null || need+=(systemd)
# The dashboard test drives /ui in headless Chromium (raw CDP, no browser download) and curl.
command -v chromium >/dev/null || need+=(chromium)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "warning: missing ${need[*]}; the tests that need them will be skipped"
  fi
fi

step "CLIs and Python packages"
./tests/install-clis.sh
CACHE="${CLINVK_TEST_CACHE:-$PWD/.test-cache}"
PY="$CACHE/venv/bin/python"

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build"
cargo build --workspace --bins --quiet

step "Rust tests"
cargo test --workspace --quiet

step "black-box tests"
# On PYTEST_WORKERS pytest-xdist workers at once; the tests of one xdist_group (tests/conftest.py)
# run one after another on one worker. 3, measured on 2 cores: the suite is mostly CPU (the CLIs
# are node programs); 2 left the cores idle while tests waited, 4 spent more CPU for no gain.
# PYTEST_ARGS="-n 0" runs them all serially. The tests' folders go under a short base folder:
# their HOMEs hold Unix sockets, whose paths must stay under 108 bytes, and xdist adds
# popen-gwN/ to each. They are kept when a test fails.
basetemp="$(mktemp -d /tmp/ck-XXXXXX)"
rc=0
# shellcheck disable=SC2086
"$PY" -m pytest -p no:cacheprovider -ra -n "${PYTEST_WORKERS:-3}" --dist loadgroup \
  --basetemp "$basetemp" tests/ ${PYTEST_ARGS:-} || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "the tests' folders (daemon and fake model logs) are in $basetemp"
  exit "$rc"
fi
rm -rf "$basetemp"

step "Debian package (build, install, check, remove)"
# Needs root and dpkg (CI has both); CLINVK_SKIP_DEB_CHECK=1 skips it on a developer machine.
./tests/deb-check.sh

step "all tests passed"
