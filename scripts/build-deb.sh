#!/usr/bin/env bash
# Builds the Debian package `clinvk` (clinvk, clinvkctl, clinvkd, their man pages and shell
# completions, the systemd system and user units, the sysusers file, the docs) with cargo-deb.
# The package metadata is [package.metadata.deb] in clinvkctl/Cargo.toml; the maintainer
# scripts are in packaging/deb/.
#
# Usage: scripts/build-deb.sh      (prints the path of the .deb as its last line on stdout;
#                                   everything else goes to stderr)
#
# Steps: installs cargo-deb (pinned) if missing into $CLINVK_TEST_CACHE/cargo (default
# <repo>/.test-cache/cargo), `cargo build --release --workspace --locked`, scripts/build-man.sh,
# the deb copies of the units in target/deb-assets/, then `cargo deb -p clinvkctl --no-build`.
# Safe to run again: every generated folder is made anew. Output: target/debian/clinvk_*.deb.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${CLINVK_TEST_CACHE:-$ROOT/.test-cache}"
CARGO_DEB_ROOT="$CACHE/cargo"
start=$SECONDS

step() { printf '==> build-deb: %s (%ds)\n' "$*" "$((SECONDS - start))" >&2; }
die() { echo "build-deb.sh: error: $*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found on PATH"

# The asset paths of the package metadata name <repo>/target: build there whatever the
# environment or a cargo config says.
export CARGO_TARGET_DIR="$ROOT/target"

step "tools"
# cargo-deb computes the libc dependency ($auto) with dpkg-shlibdeps, from dpkg-dev.
if ! command -v dpkg-shlibdeps >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing dpkg-dev (dpkg-shlibdeps)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpkg-dev >/dev/null
  fi
  command -v dpkg-shlibdeps >/dev/null ||
    die "dpkg-shlibdeps is missing (apt-get install dpkg-dev): without it the package would have no libc dependency"
fi

if ! "$CARGO_DEB_ROOT/bin/cargo-deb" --version 2>/dev/null | grep -qw "$CARGO_DEB_VERSION"; then
  echo "installing cargo-deb $CARGO_DEB_VERSION into $CARGO_DEB_ROOT" >&2
  mkdir -p "$CARGO_DEB_ROOT"
  # Not into the project's target folder: cargo install would honour CARGO_TARGET_DIR.
  env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET_DIR \
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --root "$CARGO_DEB_ROOT" --force
  "$CARGO_DEB_ROOT/bin/cargo-deb" --version 2>/dev/null | grep -qw "$CARGO_DEB_VERSION" ||
    die "cargo-deb $CARGO_DEB_VERSION did not install into $CARGO_DEB_ROOT"
fi
export PATH="$CARGO_DEB_ROOT/bin:$PATH"

step "cargo build --release --workspace --locked"
# --locked: exactly the versions in Cargo.lock (an out-of-date lock file is an error).
cargo build --release --workspace --locked

step "man pages and completions"
scripts/build-man.sh "$CARGO_TARGET_DIR/release" >&2

step "deb assets"
ASSETS="$ROOT/target/deb-assets"
rm -rf "$ASSETS"
mkdir -p "$ASSETS/systemd/system" "$ASSETS/systemd/user"
# The units name the binary where `cargo install` or a hand install puts it; the package's is
# /usr/bin/clinvkd.
deb_unit() { # SRC DEST
  sed -E -e 's#^ExecStart=[^ ]*/clinvkd( |$)#ExecStart=/usr/bin/clinvkd\1#' \
      -e 's#^\# Where .cargo install --path clinvkd. puts it.*$#\# Installed by the clinvk Debian package.#' \
      "$1" >"$2"
  grep -Eq '^ExecStart=/usr/bin/clinvkd( |$)' "$2" ||
    die "$1: no ExecStart=…/clinvkd line to point at /usr/bin/clinvkd"
  if grep '^ExecStart=' "$2" | grep -qv '^ExecStart=/usr/bin/clinvkd'; then
    die "$1: an ExecStart= line does not run /usr/bin/clinvkd"
  fi
}
deb_unit systemd/system/clinvkd.service "$ASSETS/systemd/system/clinvkd.service"
deb_unit systemd/user/clinvkd.service "$ASSETS/systemd/user/clinvkd.service"

step "cargo deb"
mkdir -p target/debian
rm -f target/debian/clinvk_*.deb
errlog="$ROOT/target/debian/cargo-deb.log"
if ! deb="$(cargo deb -p clinvkctl --no-build 2>"$errlog")"; then
  cat "$errlog" >&2
  die "cargo deb failed"
fi
# cargo-deb warns about every asset under ../target/ that is not target/release/ (it cannot
# build those): ours are generated above on purpose, so that warning is dropped; others stay.
grep -vF "are detected as Cargo target dir. '../target/" "$errlog" >&2 || true
deb="$(printf '%s\n' "$deb" | tail -n 1)"
[ -f "$deb" ] || die "cargo deb did not report a .deb (got: '$deb')"
# Every asset must be there: a glob that matched nothing would silently drop files.
contents="$(dpkg-deb --contents "$deb")"
for f in usr/bin/clinvk usr/bin/clinvkctl usr/bin/clinvkd \
         usr/share/man/man1/clinvk.1.gz usr/share/man/man1/clinvkctl.1.gz \
         usr/share/man/man8/clinvkd.8.gz \
         usr/share/bash-completion/completions/clinvk usr/share/bash-completion/completions/clinvkctl \
         usr/share/zsh/vendor-completions/_clinvk usr/share/zsh/vendor-completions/_clinvkctl \
         usr/share/fish/vendor_completions.d/clinvk.fish usr/share/fish/vendor_completions.d/clinvkctl.fish \
         usr/lib/systemd/system/clinvkd.service usr/lib/systemd/system/clinvkd.socket \
         usr/lib/systemd/user/clinvkd.service usr/lib/systemd/user/clinvkd.socket \
         usr/lib/systemd/user/clinvkd-control.socket usr/lib/sysusers.d/clinvk.conf \
         usr/share/doc/clinvk/README.md usr/share/doc/clinvk/service.md; do
  grep -q " \./$f\$" <<<"$contents" || die "$deb lacks /$f"
done

step "done: $(du -h "$deb" | cut -f1) $(dpkg-deb --field "$deb" Package Version Architecture Depends | tr '\n' ' ')"
echo "$deb"
