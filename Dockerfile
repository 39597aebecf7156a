# syntax=docker/dockerfile:1
# Production image of dhpp-driver and dhpp-controller (one image: the
# controller Deployment runs /dhpp-controller from it). `make image` builds it
# and saves it to _output/dhpp-image.tar:
#   docker build --build-arg VERSION=v0.1.0 -t ghcr.io/dhpp-io/dhpp-driver:v0.1.0 .
# Where no Docker daemon answers, `make image` assembles the same layout with
# hack/images instead (the local e2e cluster's builder, see test/e2e).

# ---- build: a static binary, so the runtime stage needs no Go and no libc match.
FROM golang:1.26 AS build
# GOTOOLCHAIN=local: build with the image's Go, never download another.
ENV CGO_ENABLED=0 GOOS=linux GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
WORKDIR /src
# Modules first, so a source change reuses the download layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath \
      -ldflags "-s -w -X github.com/dhpp-io/dhpp/pkg/dhpp.Version=${VERSION}" \
      -o /out/ ./cmd/dhpp-driver ./cmd/dhpp-controller

# ---- runtime: the driver shells out only for what has no stable syscall
# interface: mount/umount and losetup (mount, util-linux), mkfs and grow
# tools per backend (e2fsprogs, xfsprogs, btrfs-progs).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      util-linux mount e2fsprogs xfsprogs btrfs-progs \
 && rm -rf /var/lib/apt/lists/*
# At the root, where hack/images puts them and deploy/ runs them.
COPY --from=build /out/dhpp-driver /out/dhpp-controller /
# Runs as root: the DaemonSet makes it privileged to mount and create
# loop devices; there is no unprivileged mode.
ENTRYPOINT ["/dhpp-driver"]
