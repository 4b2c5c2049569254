# Build:  docker build --build-arg VERSION=v1.2.3 -t unstuck .
#
# The image runs the repository's config.yaml, whose listener is on
# 127.0.0.1:8080: right for a sidecar, which shares the pod's network
# namespace with the app. Run standalone, the container must listen on all
# its interfaces for a published port to reach it:
#   docker run -p 8080:8080 -e UNSTUCK_LISTENERS_APP_LISTEN=0.0.0.0:8080 \
#     -e UNSTUCK_UPSTREAMS_BACKEND_ENDPOINTS=backend:9000 unstuck
# Mount another file over /etc/unstuck/config.yaml to change more.

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
# 8080: the app listener of config.yaml. 9901: the planned admin and metrics
# port; nothing listens on it yet.
EXPOSE 8080 9901
ENTRYPOINT ["/unstuck"]
CMD ["--config", "/etc/unstuck/config.yaml"]
