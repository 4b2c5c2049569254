#!/usr/bin/env bash
# Builds the release binaries: static linux/amd64 and linux/arm64 builds of
# cmd/unstuck into dist/, and dist/SHA256SUMS. Run it from anywhere:
#   scripts/release.sh                  # VERSION from git describe
#   VERSION=v1.2.3 scripts/release.sh
# Environment: VERSION (default: git describe --tags --always --dirty, or
# "dev" outside a git checkout), DIST (default dist), PLATFORMS (default
# "linux/amd64 linux/arm64").
#
# The go build line uses the Dockerfile's flags; deploy/release_test.go
# checks that they stay the same.
set -euo pipefail

cd "$(dirname "$0")/.."
if [ -z "${VERSION:-}" ]; then
	VERSION="$(git describe --tags --always --dirty 2>/dev/null || echo dev)"
fi
DIST="${DIST:-dist}"
PLATFORMS="${PLATFORMS:-linux/amd64 linux/arm64}"
GO="${GO:-go}"

rm -rf "$DIST"
mkdir -p "$DIST"
for platform in $PLATFORMS; do
	goos="${platform%/*}"
	goarch="${platform#*/}"
	out="$DIST/unstuck-$VERSION-$goos-$goarch"
	echo "building $out"
	CGO_ENABLED=0 GOOS="$goos" GOARCH="$goarch" "$GO" build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o "$out" ./cmd/unstuck
done
(cd "$DIST" && sha256sum unstuck-* >SHA256SUMS)
echo "$DIST/SHA256SUMS:"
cat "$DIST/SHA256SUMS"
