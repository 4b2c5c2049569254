# Build:  docker build --build-arg VERSION=v1.2.3 -t unstuck .
#
# The image runs the repository's config.yaml, with log.format json (one
# object per line, for a log shipper): UNSTUCK_LOG_FORMAT=json below. Its
# listener is on
# 127.0.0.1:8080: right for a sidecar, which shares the pod's network
# namespace with the app. Run standalone, the container must listen on all
# its interfaces for a published port to reach it (the admin port too, to
# scrape /metrics from outside):
#   docker run -p 8080:8080 -p 9901:9901 \
#     -e UNSTUCK_LISTENERS_APP_LISTEN=0.0.0.0:8080 -e UNSTUCK_ADMIN_LISTEN=0.0.0.0:9901 \
#     -e UNSTUCK_UPSTREAMS_BACKEND_ENDPOINTS=backend:9000 unstuck
# Mount another file over /etc/unstuck/config.yaml to change more.
#
# The go build line below is the release build: scripts/release.sh uses the
# same flags, and deploy/image_test.go runs this very line, then checks that
# the binary is static and serves as uid 65532 in an empty root directory.

FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first: this layer is rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/unstuck ./cmd/unstuck

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/unstuck /unstuck
COPY config.yaml /etc/unstuck/config.yaml
USER 65532:65532
# JSON logs in a container; -e UNSTUCK_LOG_FORMAT=console for people.
ENV UNSTUCK_LOG_FORMAT=json
# 8080: the app listener of config.yaml. 9901: the admin listener
# (/healthz, /readyz, /metrics). The debug listener (/debug/pool, pprof)
# stays on the container's loopback, 127.0.0.1:9902: not exposed.
EXPOSE 8080 9901
# No shell in the image: the binary checks itself. It reads the same file
# and UNSTUCK_* environment as the sidecar, so it finds the admin listener
# wherever they put it (0.0.0.0 is checked on loopback). With the admin
# listener off (UNSTUCK_ADMIN_LISTEN=), run with --no-healthcheck.
# Kubernetes ignores HEALTHCHECK; deploy/kubernetes/ has its own probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/unstuck", "healthcheck", "--config", "/etc/unstuck/config.yaml", "--timeout", "2s"]
ENTRYPOINT ["/unstuck"]
CMD ["--config", "/etc/unstuck/config.yaml"]
