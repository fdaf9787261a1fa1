#!/usr/bin/env bash
# Build the pinned FerretDB (MongoDB wire protocol over SQLite) once, into a cache outside the clone.
# `go install ...@version` builds a binary that panics at start: the release version lives in an
# untracked build/version/version.txt, so we build from a writable copy of the module with that file.
set -euo pipefail
version="${FERRETDB_VERSION:-v1.24.2}"
# The cache directory: the first argument (`mail-bridge install --store` passes its own), else
# MAIL_BRIDGE_CACHE, else ~/.cache/mail-bridge (make setup).
cache="${1:-${MAIL_BRIDGE_CACHE:-${HOME:-/root}/.cache/mail-bridge}}"
# The suffix names our one-line patch (below): a binary built without it is not reused.
bin="$cache/ferretdb-$version-idindex"
if [ -x "$bin" ]; then exit 0; fi
# The Go toolchain may live outside the PATH a non-login shell gets.
command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin:/usr/lib/go/bin"
command -v go >/dev/null || { echo "install-ferretdb: the Go toolchain is needed to build FerretDB" >&2; exit 1; }
mkdir -p "$cache"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
echo "building FerretDB $version (once; cached in $cache)"
src=$(cd "$cache" && go mod download -json "github.com/FerretDB/FerretDB@$version" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cp -r "$src/." "$work/"
chmod -R u+w "$work"
echo "$version" > "$work/build/version/version.txt"
# One-line fix to the SQLite backend: its `_id` lookups compare `_ferretdb_sjson->'$._id'`, but the
# unique `_id` index it creates is on `_ferretdb_sjson->"_id"`; SQLite matches index expressions as
# written, so every lookup by `_id` scanned the whole table (measured: 10 ms per upsert at 650
# documents, growing with the table). Written the index's way, lookups use the index.
meta="$work/internal/backends/sqlite/metadata/metadata.go"
grep -q "IDColumn = DefaultColumn + \"->'\$._id'\"" "$meta" \
  || { echo "install-ferretdb: $version's IDColumn is not the one the patch expects" >&2; exit 1; }
sed -i "s|IDColumn = DefaultColumn + \"->'\$._id'\"|IDColumn = DefaultColumn + \"->\\\\\"_id\\\\\"\"|" "$meta"
(cd "$work" && go build -trimpath -o "$bin.tmp" ./cmd/ferretdb)
mv "$bin.tmp" "$bin"
echo "FerretDB $version built: $bin"
