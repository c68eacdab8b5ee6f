#!/usr/bin/env bash
# Generates the man pages and the shell completions of clinvk, clinvkctl and clinvkd from the
# built binaries (their clap definitions), into:
#   target/man/            clinvk.1, clinvk-*.1, clinvkctl.1, clinvkctl-*.1, clinvkd.8
#   target/completions/    bash/{clinvk,clinvkctl}, zsh/_{clinvk,clinvkctl},
#                          fish/{clinvk,clinvkctl}.fish
#
# Usage: scripts/build-man.sh [BIN_DIR]
#   BIN_DIR (or the environment variable CLINVK_BIN_DIR): the folder holding the built
#   clinvk, clinvkctl and clinvkd; they are used as they are, nothing is built.
#   Without either, `cargo build --release --workspace` runs first and BIN_DIR is
#   target/release (or $CARGO_TARGET_DIR/release).
# Both output folders are emptied first, so a removed subcommand leaves no stale page behind.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MAN_DIR="$ROOT/target/man"
COMP_DIR="$ROOT/target/completions"

die() { echo "build-man.sh: error: $*" >&2; exit 1; }

if [ $# -gt 1 ]; then
  die "usage: $0 [BIN_DIR]"
fi
bin_dir="${1:-${CLINVK_BIN_DIR:-}}"
if [ -z "$bin_dir" ]; then
  (cd "$ROOT" && cargo build --release --workspace)
  bin_dir="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
[ -d "$bin_dir" ] || die "binary folder not found: $bin_dir"
bin_dir="$(cd "$bin_dir" && pwd)"
for b in clinvk clinvkctl clinvkd; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing or not executable (build it first, or run this script without arguments)"
done

rm -rf "$MAN_DIR" "$COMP_DIR"
mkdir -p "$MAN_DIR" "$COMP_DIR/bash" "$COMP_DIR/zsh" "$COMP_DIR/fish"

# Man pages: section 1 for the clients (one page per subcommand too), section 8 for the daemon.
"$bin_dir/clinvk" generate-man "$MAN_DIR" >/dev/null ||
  die "'clinvk generate-man' failed (is $bin_dir/clinvk older than the sources?)"
"$bin_dir/clinvkctl" generate-man "$MAN_DIR" >/dev/null ||
  die "'clinvkctl generate-man' failed (is $bin_dir/clinvkctl older than the sources?)"
"$bin_dir/clinvkd" --generate-man "$MAN_DIR" >/dev/null ||
  die "'clinvkd --generate-man' failed (is $bin_dir/clinvkd older than the sources?)"
for page in clinvk.1 clinvkctl.1 clinvkd.8; do
  [ -s "$MAN_DIR/$page" ] || die "$MAN_DIR/$page was not generated"
done

# Completions: the file names the shells look up by command name.
for cmd in clinvk clinvkctl; do
  "$bin_dir/$cmd" completions bash >"$COMP_DIR/bash/$cmd"
  "$bin_dir/$cmd" completions zsh >"$COMP_DIR/zsh/_$cmd"
  "$bin_dir/$cmd" completions fish >"$COMP_DIR/fish/$cmd.fish"
  for f in "$COMP_DIR/bash/$cmd" "$COMP_DIR/zsh/_$cmd" "$COMP_DIR/fish/$cmd.fish"; do
    [ -s "$f" ] || die "$f is empty"
  done
  bash -n "$COMP_DIR/bash/$cmd" || die "$COMP_DIR/bash/$cmd is not valid bash"
  if command -v zsh >/dev/null; then
    zsh -n "$COMP_DIR/zsh/_$cmd" || die "$COMP_DIR/zsh/_$cmd is not valid zsh"
  fi
  if command -v fish >/dev/null; then
    fish --no-execute "$COMP_DIR/fish/$cmd.fish" || die "$COMP_DIR/fish/$cmd.fish is not valid fish"
  fi
done

n_man=$(find "$MAN_DIR" -type f | wc -l)
n_comp=$(find "$COMP_DIR" -type f | wc -l)
echo "build-man.sh: $n_man man pages in ${MAN_DIR#"$ROOT"/}/, $n_comp completion scripts in ${COMP_DIR#"$ROOT"/}/ (from $bin_dir)"
