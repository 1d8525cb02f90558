#!/usr/bin/env bash
# Installs everything dormant needs, then builds it. Idempotent, and fast
# (about a second) when everything is already there. Used by npm run demo,
# npm test and npm run bench*; safe to run by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: e2fsprogs (demo image), qemu-utils, libnbd-bin, nbdkit,
# fio (real NBD clients and peers for tests and benchmarks), fuse3
# (libfuse3 for the FUSE view, fusermount), and for the
# test guest (dormant image build-test-guest, test/vm, test/pager): busybox-static, cpio,
# kmod (depmod), gcc + libc6-dev (the guest's static memory ballast) and
# qemu-system-x86 to boot it. The guest's kernel is not
# installed: the builder fetches it with apt-get download. The native addon
# (native/) needs g++, make and python3 (node-gyp; python3 also runs the
# addon's test helper), libxxhash-dev (xxhash.h, compiled in with
# XXH_INLINE_ALL) and libfuse3-dev (the FUSE view's session, native/src/fuse.cc).
DEB_PACKAGES=(e2fsprogs qemu-utils libnbd-bin nbdkit fio openssl fuse3 busybox-static cpio kmod qemu-system-x86 etcd-server
  g++ gcc libc6-dev make python3 libxxhash-dev libfuse3-dev)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm dependencies, exactly as locked.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi

# Native addon (native/README.md): rebuilt when a source, or the locked
# dependencies (node-addon-api), are newer than the built module. Quiet unless
# the build fails.
NATIVE=native/build/Release/dormant_native.node
if [ ! -f "$NATIVE" ] || [ -n "$(find native package-lock.json -path native/build -prune -o -type f -newer "$NATIVE" -print -quit)" ]; then
  echo "setup: building the native addon" >&2
  log=$(mktemp)
  # Headers of the running Node (PREFIX/include/node): nodejs.org is not reachable to download them.
  nodedir=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
  if ! npx --no-install node-gyp rebuild -C native --nodedir="$nodedir" -j max >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
fi

# Build (TypeScript -> dist/) when a source is newer than the last build.
if [ ! -f dist/.tsbuildinfo ] || [ -n "$(find src tsconfig.json package.json -newer dist/.tsbuildinfo -print -quit)" ]; then
  echo "setup: building" >&2
  npx tsc -p .
  touch dist/.tsbuildinfo
fi
