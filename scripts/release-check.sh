#!/usr/bin/env bash
# Build dtfc for every release target, as .goreleaser.yaml does (CGO off,
# -trimpath, -ldflags "-s -w -X main.version=..."), and check each binary
# with the Go toolchain's own reading of it (go version -m): the target's
# OS and architecture, cgo off, the flags. The binary for this machine, if
# it is a target, must print the stamped version.
#
#   scripts/release-check.sh [VERSION]     (default 0.0.0-release-check)
#
# Prints "ok GOOS/GOARCH SIZE" per target; exits non-zero on any failure.
# The targets below must match .goreleaser.yaml (deploy/release_test.go
# checks that they do).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-0.0.0-release-check}
targets=(linux/amd64 linux/arm64 darwin/amd64 darwin/arm64)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
host="$(go env GOHOSTOS)/$(go env GOHOSTARCH)"

fail() { echo "release-check: $*" >&2; exit 1; }

for t in "${targets[@]}"; do
  goos=${t%/*}
  goarch=${t#*/}
  bin="$out/dtfc-$goos-$goarch"
  CGO_ENABLED=0 GOOS=$goos GOARCH=$goarch \
    go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$bin" ./cmd/dtfc \
    || fail "$t: go build failed"
  info=$(go version -m "$bin") || fail "$t: go version -m cannot read the binary"
  # (With -trimpath, Go does not record -ldflags in the build info.)
  for want in "build	GOOS=$goos" "build	GOARCH=$goarch" "build	CGO_ENABLED=0" "build	-trimpath=true"; do
    grep -qF -- "$want" <<<"$info" || fail "$t: the binary's build info lacks '$want':"$'\n'"$info"
  done
  grep -qaF -- "$version" "$bin" || fail "$t: the version $version is not stamped in the binary"
  if [ "$t" = "$host" ]; then
    got=$("$bin" version) || fail "$t: dtfc version failed"
    [ "$got" = "dtfc $version" ] || fail "$t: dtfc version printed '$got', want 'dtfc $version'"
  fi
  printf 'ok %s %s\n' "$t" "$(wc -c <"$bin" | tr -d ' ')"
done
