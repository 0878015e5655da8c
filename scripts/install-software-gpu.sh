#!/usr/bin/env bash
# Installs a software Vulkan driver (Mesa's lavapipe) so Dawn (npm `webgpu`) finds a WebGPU
# adapter on a Linux machine without a GPU. See DESIGN.md, "Software GPU on Linux without a GPU".
#
# Why backports on Debian 12: bookworm's own Mesa 22 lavapipe is rejected by Dawn
# ("shaderUniform*ArrayDynamicIndexing required"); the Mesa 25 in bookworm-backports works.
#
# Idempotent: exits at once when an adapter already works, and rewrites nothing that is already
# in place. Non-interactive. Uses sudo only when not root.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '[install-software-gpu] %s\n' "$*"; }
die() { printf '[install-software-gpu] error: %s\n' "$*" >&2; exit 1; }

# probe-adapter.mjs exits 0 (adapter found), 1 (none), 2 (the `webgpu` package is not installed).
probe() {
  local rc=0
  node scripts/probe-adapter.mjs || rc=$?
  return "$rc"
}

probe_rc=0
if command -v node >/dev/null 2>&1; then
  probe || probe_rc=$?
else
  probe_rc=2
fi
if [ "$probe_rc" -eq 0 ]; then
  say "a WebGPU adapter already works; nothing to install."
  exit 0
fi
if [ "$probe_rc" -eq 2 ]; then
  say "cannot probe yet (node or node_modules/webgpu missing: run 'npm ci'); installing anyway."
fi

# --- Which system is this? ---------------------------------------------------------------------
if [ "$(uname -s)" != "Linux" ] || ! command -v apt-get >/dev/null 2>&1 || [ ! -r /etc/os-release ]; then
  cat >&2 <<'EOF'
[install-software-gpu] This script knows Debian/Ubuntu (apt) only.
  Elsewhere, install a Vulkan loader and Mesa's lavapipe driver, Mesa 24 or newer
  (Fedora: dnf install mesa-vulkan-drivers vulkan-loader; Arch: pacman -S vulkan-swrast vulkan-icd-loader),
  or run on a machine with a GPU driver. Then check with: node scripts/probe-adapter.mjs
  macOS and Windows need nothing: Dawn uses Metal / D3D12 there.
EOF
  exit 2
fi
# shellcheck disable=SC1091
. /etc/os-release
distro="${ID:-unknown}"
codename="${VERSION_CODENAME:-}"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "not root and no sudo; rerun this script as root."
  SUDO=(sudo)
fi
# `sudo VAR=value cmd` keeps the variable even where sudo's env_reset would drop an export.
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Use-Pty=0)

# --- Debian 12: add bookworm-backports as its own deb822 source ----------------------------------
target=()
if [ "$distro" = "debian" ] && [ "$codename" = "bookworm" ]; then
  suite="bookworm-backports"
  target=(-t "$suite")
  backports_file=/etc/apt/sources.list.d/debian-backports.sources
  if grep -rqsw -- "$suite" /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
    say "apt already has $suite."
  else
    # Take URI and keyring from the existing Debian source (deb822 paragraph listing `bookworm`),
    # so mirrors and snapshot setups carry over; fall back to Debian's defaults.
    uri="http://deb.debian.org/debian"
    keyring="/usr/share/keyrings/debian-archive-keyring.gpg"
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -r "$f" ] || continue
      found=$(awk -v RS= '/(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/ && !/debian-security/' "$f" | head -n 20)
      [ -n "$found" ] || continue
      u=$(printf '%s\n' "$found" | sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' | head -n 1)
      k=$(printf '%s\n' "$found" | sed -n 's/^Signed-By:[[:space:]]*\([^[:space:]]*\).*/\1/p' | head -n 1)
      [ -n "$u" ] && uri="$u"
      [ -n "$k" ] && [ -r "$k" ] && keyring="$k"
      break
    done
    say "adding $suite ($uri) in $backports_file"
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
      "$uri" "$suite" "$keyring" | "${SUDO[@]}" tee "$backports_file" >/dev/null
  fi
elif [ "$distro" = "debian" ] || [ "$distro" = "ubuntu" ] || [[ " ${ID_LIKE:-} " == *" debian "* ]]; then
  say "$PRETTY_NAME: using its own mesa-vulkan-drivers (Dawn needs Mesa 24 or newer)."
else
  die "unknown apt-based system '$distro'; install mesa-vulkan-drivers (Mesa >= 24) and libvulkan1 by hand."
fi

# --- Install -------------------------------------------------------------------------------------
start=$SECONDS
say "apt-get update"
"${APT[@]}" update
say "installing mesa-vulkan-drivers ${target[*]}"
"${APT[@]}" install --no-install-recommends "${target[@]}" mesa-vulkan-drivers
say "installing libvulkan1"
"${APT[@]}" install --no-install-recommends libvulkan1
say "installed in $((SECONDS - start)) s: $(dpkg-query -W -f='mesa-vulkan-drivers ${Version}, libvulkan1 ' mesa-vulkan-drivers)$(dpkg-query -W -f='${Version}' libvulkan1)"

# --- Check ---------------------------------------------------------------------------------------
probe_rc=0
if command -v node >/dev/null 2>&1; then probe || probe_rc=$?; else probe_rc=2; fi
case "$probe_rc" in
  0) say "done: a WebGPU adapter works." ;;
  2) say "installed, but not verified: run 'npm ci', then 'node scripts/probe-adapter.mjs'." ;;
  *) die "installed, yet Dawn still finds no adapter (see the line above)." ;;
esac
