#!/bin/sh
# Build kcptun's client and server (the UDP tunnel bench/run compares the QUIC
# bridge and p2p against) into a cache dir, and print that dir.
#
#   bench/kcptun.sh            # clone github.com/xtaci/kcptun, build, print the dir
#   KCPTUN_SRC=DIR bench/kcptun.sh   # build from a checkout or a bare git dir instead
#
# Needs Go >= 1.17 (Debian's golang-go is enough).  The pinned commit is the
# v20230207 vendor update: its vendor/ tree builds without the module proxy.
# kcptun's code is not part of this repository; it is built in the cache only.
set -eu
COMMIT=00ce2f86aff770b825f79585f0198d36058764b9
CACHE=${KCPTUN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nps-bench/kcptun}
if [ -x "$CACHE/kcptun-client" ] && [ -x "$CACHE/kcptun-server" ]; then
    echo "$CACHE"
    exit 0
fi
command -v go >/dev/null 2>&1 || { echo "kcptun.sh: no 'go' on PATH (apt-get install golang-go)" >&2; exit 2; }
mkdir -p "$CACHE"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=${KCPTUN_SRC:-}
if [ -z "$src" ]; then
    git clone -q https://github.com/xtaci/kcptun "$work/git" >&2
    src="$work/git"
fi
if [ -d "$src/objects" ] && [ -f "$src/HEAD" ]; then
    gitdir="$src"            # a bare repository
else
    gitdir="$src/.git"
fi
mkdir -p "$work/tree"
git --git-dir="$gitdir" archive "$COMMIT" | tar -x -C "$work/tree"
cd "$work/tree"
GOFLAGS=-mod=vendor CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.VERSION=20230207" \
    -o "$CACHE/kcptun-client" ./client >&2
GOFLAGS=-mod=vendor CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.VERSION=20230207" \
    -o "$CACHE/kcptun-server" ./server >&2
echo "$CACHE"
