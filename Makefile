# make build    the binary for this machine, as ./unstuck
# make test     the tests, exactly as CI runs them (README, .ci/run)
# make release  static linux/amd64 and linux/arm64 binaries and SHA256SUMS
#               in dist/ (scripts/release.sh; VERSION=v1.2.3 make release)

GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: build test release clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o unstuck ./cmd/unstuck

test:
	go vet ./... && go test -race -count=1 -timeout 12m ./... && (cd deploy && go vet ./... && go test -race -count=1 ./...) && go test -count=1 -run 'DoesNotAllocate' ./... && go test -run '^$$' -fuzz '^FuzzRequestPath$$' -fuzztime 3000x ./proxy && go test -run '^$$' -fuzz '^FuzzFramingGuard$$' -fuzztime 100000x ./proxy && go test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime 5000x ./config

release:
	VERSION=$(VERSION) GO=$(GO) scripts/release.sh

clean:
	rm -rf unstuck dist
