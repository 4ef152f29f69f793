#!/usr/bin/env bash
# Install bslfs on a fresh Debian/Ubuntu host and mount a demo filesystem on the embedded
# default: one local device, one logical volume, the LevelDB directory.
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
npm ci --no-audit --no-fund

# The CLI on PATH, and the helper mount(8) runs for `mount -t bslfs` and /etc/fstab.
$SUDO ln -sf "$PWD/bin/bslfs" /usr/local/bin/bslfs
$SUDO ln -sf "$PWD/bin/mount.bslfs" /sbin/mount.bslfs

# The main job: a filesystem, mounted, with a file in it.
[ -f "$STATE/bslfs.json" ] || $SUDO bslfs init "$STATE"
$SUDO mkdir -p "$MOUNTPOINT"
if ! grep -q " $MOUNTPOINT fuse.bslfs " /proc/self/mounts; then $SUDO bslfs mount "$STATE" "$MOUNTPOINT"; fi
echo "hello from bslfs" | $SUDO tee "$MOUNTPOINT/hello.txt" >/dev/null
$SUDO bslfs status "$STATE"
$SUDO bslfs bsl "$STATE" "$MOUNTPOINT/hello.txt"
echo
echo "bslfs is mounted at $MOUNTPOINT. Unmount with: bslfs unmount $MOUNTPOINT"
