#!/usr/bin/env bash
# Builds the Debian package (scripts/build-deb.sh), installs it with dpkg, checks what it put on
# the system (binaries and their version, man pages, completions, systemd units, the sysusers
# file and the user clinvk), then removes it (dpkg -r) and checks the binaries are gone, and
# purges it (dpkg --purge).
# Exits non-zero on any failure. Needs root and dpkg; without them it fails, unless
# CLINVK_SKIP_DEB_CHECK=1 (then it says why and exits 0).
#
# Environment: CLINVK_DEB=path/to/clinvk_*.deb checks that package instead of building one;
# CLINVK_TEST_CACHE is passed on to build-deb.sh (where cargo-deb is installed).
# The package is removed at the end even when a check fails; so are the system user clinvk and
# /var/lib/clinvk when they did not exist before the check (dpkg -r alone keeps them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
start=$SECONDS

say() { printf 'deb-check: %s\n' "$*"; }
cannot() {
  if [ "${CLINVK_SKIP_DEB_CHECK:-}" = 1 ]; then
    say "skipped (CLINVK_SKIP_DEB_CHECK=1): $*"
    exit 0
  fi
  say "cannot run: $* (set CLINVK_SKIP_DEB_CHECK=1 to skip this check)" >&2
  exit 1
}
[ "$(id -u)" = 0 ] || cannot "not root: dpkg -i needs root"
command -v dpkg >/dev/null || cannot "no dpkg: not a Debian-based system"

VERSION="$(awk '
  /^\[/ { section = $0 }
  section == "[workspace.package]" && /^version *=/ { gsub(/^version *= *"|".*$/, ""); print; exit }
' Cargo.toml)"
[ -n "$VERSION" ] || { say "FAIL: no version in [workspace.package] of Cargo.toml" >&2; exit 1; }

passed=0
failed=0
# check DESCRIPTION COMMAND...: runs COMMAND; its output is shown only when it fails.
check() {
  local desc="$1" out
  shift
  if out="$("$@" 2>&1)"; then
    passed=$((passed + 1))
    printf '  ok    %s\n' "$desc"
  else
    failed=$((failed + 1))
    printf '  FAIL  %s\n' "$desc"
    [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/        | /'
  fi
}
fatal() { say "FAIL: $*" >&2; exit 1; }

# --- build ---------------------------------------------------------------------------------
if [ -n "${CLINVK_DEB:-}" ]; then
  deb="$CLINVK_DEB"
  say "checking the given package $deb"
else
  say "building the package (scripts/build-deb.sh)"
  deb="$(scripts/build-deb.sh | tail -n 1)" || fatal "scripts/build-deb.sh failed"
fi
[ -f "$deb" ] || fatal "no package file: '$deb'"
say "package $deb ($(du -h "$deb" | cut -f1)), workspace version $VERSION"

if dpkg-query -W -f='${Status}' clinvk 2>/dev/null | grep -q 'install ok installed'; then
  say "note: package clinvk is already installed ($(dpkg-query -W -f='${Version}' clinvk)); it is replaced, then removed"
fi

# The check leaves the machine as it found it: the package removed, and the user clinvk and its
# home removed again if they did not exist before (dpkg -r itself keeps them, as Debian does).
had_user=0; getent passwd clinvk >/dev/null && had_user=1
had_group=0; getent group clinvk >/dev/null && had_group=1
had_home=0; [ -e /var/lib/clinvk ] && had_home=1
installed=0
cleanup() {
  if [ "$installed" = 1 ]; then
    say "cleanup: removing the package after a failure"
    dpkg --purge clinvk >/dev/null 2>&1 || say "cleanup: dpkg --purge clinvk failed; remove it by hand" >&2
  fi
  if [ "$had_user" = 0 ] && getent passwd clinvk >/dev/null; then
    userdel clinvk 2>/dev/null || say "cleanup: userdel clinvk failed" >&2
  fi
  if [ "$had_group" = 0 ] && getent group clinvk >/dev/null; then
    groupdel clinvk 2>/dev/null || say "cleanup: groupdel clinvk failed" >&2
  fi
  if [ "$had_home" = 0 ] && [ -d /var/lib/clinvk ]; then
    rm -rf /var/lib/clinvk
  fi
}
trap cleanup EXIT

# --- install -------------------------------------------------------------------------------
say "dpkg -i"
installed=1
if ! out="$(dpkg -i "$deb" 2>&1)"; then
  printf '%s\n' "$out" | sed 's/^/        | /' >&2
  fatal "dpkg -i $deb failed"
fi
check "dpkg says clinvk is installed" \
  sh -c "dpkg-query -W -f='\${Status}' clinvk | grep -qx 'install ok installed'"
check "package version is $VERSION-<revision>" \
  sh -c "dpkg-query -W -f='\${Version}' clinvk | grep -Eq '^$VERSION(-[0-9A-Za-z.+~]+)?\$'"

# --- binaries ------------------------------------------------------------------------------
version_is() { # BIN NAME: the first line of BIN --version is "NAME VERSION"
  local got
  got="$("$1" --version 2>&1 | head -n 1)" || { echo "$1 --version failed: $got"; return 1; }
  [ "$got" = "$2 $VERSION" ] || { echo "$1 --version printed '$got', expected '$2 $VERSION'"; return 1; }
}
for b in clinvk clinvkctl clinvkd; do
  check "/usr/bin/$b --version prints '$b $VERSION'" version_is "/usr/bin/$b" "$b"
done
libs_resolve() { # every shared library of the binaries is found, and the package depends on libc6
  local b out
  for b in /usr/bin/clinvk /usr/bin/clinvkctl /usr/bin/clinvkd; do
    out="$(ldd "$b")" || { echo "ldd $b failed"; return 1; }
    if grep -q 'not found' <<<"$out"; then echo "$b: $out"; return 1; fi
  done
  dpkg-query -W -f='${Depends}\n' clinvk | grep -Eq '(^|, )libc6( |,|$)' ||
    { echo "Depends has no libc6: $(dpkg-query -W -f='${Depends}' clinvk)"; return 1; }
}
check "shared libraries resolve; Depends: $(dpkg-query -W -f='${Depends}' clinvk)" libs_resolve

# --- man pages -----------------------------------------------------------------------------
man_ok() { # PAGE.gz: valid gzip, a roff page
  gzip -t "$1" && zcat "$1" | grep -q '^\.TH '
}
for page in man1/clinvk.1.gz man1/clinvkctl.1.gz man8/clinvkd.8.gz; do
  check "man page /usr/share/man/$page" man_ok "/usr/share/man/$page"
done
check "a man page per subcommand (man1/clinvk-*.1.gz)" \
  sh -c 'ls /usr/share/man/man1/clinvk-*.1.gz >/dev/null'
if command -v man >/dev/null; then
  check "man clinvkd renders" sh -c 'MANPAGER=cat MANWIDTH=80 man 8 clinvkd | grep -q clinvkd'
fi

# --- completions ---------------------------------------------------------------------------
for cmd in clinvk clinvkctl; do
  check "bash completion of $cmd loads" \
    bash -c "source /usr/share/bash-completion/completions/$cmd && complete -p $cmd"
  check "zsh completion /usr/share/zsh/vendor-completions/_$cmd" \
    sh -c "grep -q '^#compdef $cmd' /usr/share/zsh/vendor-completions/_$cmd"
  check "fish completion /usr/share/fish/vendor_completions.d/$cmd.fish" \
    sh -c "grep -q 'complete -c $cmd' /usr/share/fish/vendor_completions.d/$cmd.fish"
done

# --- systemd units, sysusers, the user clinvk ----------------------------------------------
SYS=/usr/lib/systemd/system
USR=/usr/lib/systemd/user
for f in $SYS/clinvkd.service $SYS/clinvkd.socket $USR/clinvkd.service $USR/clinvkd.socket \
         $USR/clinvkd-control.socket /usr/lib/sysusers.d/clinvk.conf; do
  check "installed $f" test -s "$f"
done
execstart_ok() { # UNIT: its only ExecStart= is /usr/bin/clinvkd
  local lines
  lines="$(grep '^ExecStart=' "$1")" || { echo "$1 has no ExecStart="; return 1; }
  [ "$lines" = "ExecStart=/usr/bin/clinvkd" ] || { echo "$1: $lines"; return 1; }
}
check "system unit runs ExecStart=/usr/bin/clinvkd" execstart_ok $SYS/clinvkd.service
check "user unit runs ExecStart=/usr/bin/clinvkd" execstart_ok $USR/clinvkd.service
check "sysusers file declares the user clinvk" grep -q '^u clinvk ' /usr/lib/sysusers.d/clinvk.conf
check "user clinvk exists (id clinvk)" id clinvk
user_ok() { # home /var/lib/clinvk (0700, owned by clinvk), no login shell
  local home shell
  home="$(getent passwd clinvk | cut -d: -f6)"
  shell="$(getent passwd clinvk | cut -d: -f7)"
  [ "$home" = /var/lib/clinvk ] || { echo "home is '$home'"; return 1; }
  [ "$shell" = /usr/sbin/nologin ] || { echo "shell is '$shell'"; return 1; }
  [ "$(stat -c '%U:%G %a' /var/lib/clinvk)" = "clinvk:clinvk 700" ] ||
    { echo "/var/lib/clinvk is $(stat -c '%U:%G %a' /var/lib/clinvk)"; return 1; }
}
check "user clinvk: home /var/lib/clinvk (0700), shell /usr/sbin/nologin" user_ok

if command -v systemd-analyze >/dev/null; then
  # verify runs the unit loader offline (no running systemd needed); it must print nothing:
  # a warning (unknown key, bad value, missing executable) is a failure too.
  # A user manager needs a runtime folder: an empty one will do (nothing is started).
  runtime="$(mktemp -d)"
  verify_quiet() { # system|user UNIT_FILE...
    local mode="$1" out
    shift
    if [ "$mode" = user ]; then
      out="$(XDG_RUNTIME_DIR="$runtime" systemd-analyze verify --user --man=no "$@" 2>&1)" ||
        { echo "$out"; return 1; }
    else
      out="$(systemd-analyze verify --man=no "$@" 2>&1)" || { echo "$out"; return 1; }
    fi
    [ -z "$out" ] || { echo "$out"; return 1; }
  }
  check "systemd-analyze verify (system units)" \
    verify_quiet system $SYS/clinvkd.socket $SYS/clinvkd.service
  check "systemd-analyze verify --user (user units)" \
    verify_quiet user $USR/clinvkd.socket $USR/clinvkd-control.socket $USR/clinvkd.service
  rm -rf "$runtime"
else
  say "note: no systemd-analyze: the units are not verified"
fi

check "docs in /usr/share/doc/clinvk" \
  sh -c 'test -s /usr/share/doc/clinvk/README.md && test -s /usr/share/doc/clinvk/service.md && test -s /usr/share/doc/clinvk/copyright'

# --- reinstall (the upgrade path of the maintainer scripts) --------------------------------
check "dpkg -i again (reinstall over itself)" dpkg -i "$deb"

# --- remove --------------------------------------------------------------------------------
say "dpkg -r clinvk"
if ! out="$(dpkg -r clinvk 2>&1)"; then
  printf '%s\n' "$out" | sed 's/^/        | /' >&2
  fatal "dpkg -r clinvk failed"
fi
installed=0
gone() { # the package's files are gone
  local f left=()
  for f in /usr/bin/clinvk /usr/bin/clinvkctl /usr/bin/clinvkd $SYS/clinvkd.service \
           $SYS/clinvkd.socket $USR/clinvkd.service /usr/share/man/man1/clinvk.1.gz \
           /usr/share/bash-completion/completions/clinvk /usr/lib/sysusers.d/clinvk.conf; do
    [ ! -e "$f" ] || left+=("$f")
  done
  [ ${#left[@]} = 0 ] || { echo "still there: ${left[*]}"; return 1; }
}
check "after dpkg -r: binaries, units, man pages, completions are gone" gone
check "after dpkg -r: dpkg says clinvk is not installed" \
  sh -c "! dpkg-query -W -f='\${Status}' clinvk 2>/dev/null | grep -q 'install ok installed'"
check "after dpkg -r: the user clinvk is kept (Debian keeps system users)" id clinvk
purged() { # dpkg --purge works and leaves no trace of clinvk in dpkg's database
  local out
  out="$(dpkg --purge clinvk 2>&1)" || { echo "$out"; return 1; }
  if dpkg-query -W clinvk >/dev/null 2>&1; then
    echo "dpkg still lists it: $(dpkg -l clinvk | tail -n 1)"
    return 1
  fi
}
check "dpkg --purge clinvk: nothing left in dpkg's database" purged

echo
if [ "$had_user" = 0 ]; then
  say "done in $((SECONDS - start))s; the user clinvk that the package created is removed again"
else
  say "done in $((SECONDS - start))s"
fi
echo "deb-check: $passed passed, $failed failed"
[ "$failed" = 0 ]
