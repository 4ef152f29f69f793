#!/usr/bin/env bash
# Install bslfs on a fresh Debian/Ubuntu host as a system package (npm pack, then npm install -g
# of that tarball: nothing points into this checkout afterwards) and mount a demo filesystem on
# the embedded default: one local device, one logical volume, the LevelDB directory.
#   STATE=/var/lib/bslfs/demo  MOUNTPOINT=/mnt/demo  (override with the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${STATE:-/var/lib/bslfs/demo}
MOUNTPOINT=${MOUNTPOINT:-/mnt/demo}
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo

command -v node >/dev/null && node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || {
  echo "bslfs needs Node.js 20 or newer (node -v); install it first" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq libfuse2 fuse libfuse-dev pkg-config python3 make g++ git sqlite3 attr bindfs fio util-linux >/dev/null
# The checkout's own build (for `npm test`), and the package: npm pack compiles dist/ (prepack)
# and the global install builds the native addons on this host (its postinstall), puts bslfs and
# mount.bslfs on PATH and, as root, links /sbin/mount.bslfs into the installed package.
npm ci --no-audit --no-fund
tarball=$(npm pack --silent | tail -1)
$SUDO npm install -g --no-audit --no-fund "./$tarball"
rm -f "$tarball"
$SUDO bslfs install-helper   # again, in case npm ran the install scripts as another user

# The main job: a filesystem, mounted, with a file in it.
[ -f "$STATE/bslfs.json" ] || $SUDO bslfs init "$STATE"
$SUDO mkdir -p "$MOUNTPOINT"
if ! grep -q " $MOUNTPOINT fuse.bslfs " /proc/self/mounts; then $SUDO bslfs mount "$STATE" "$MOUNTPOINT"; fi
echo "hello from bslfs" | $SUDO tee "$MOUNTPOINT/hello.txt" >/dev/null
$SUDO bslfs status "$STATE"
$SUDO bslfs bsl "$STATE" "$MOUNTPOINT/hello.txt"
echo
echo "bslfs is mounted at $MOUNTPOINT. Unmount with: bslfs unmount $MOUNTPOINT"
