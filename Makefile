# meshd: an istiod-compatible service-mesh control plane.
SHELL := /bin/bash
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
CONFIG_DIR ?= samples/bookinfo

.PHONY: all build run demo test unit vet fmt-check system-deps kube-tools e2e-kube bench load clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/discovery ./cmd/discovery
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/agent ./cmd/agent
	$(GO) build -o $(BIN)/xdsload ./cmd/xdsload
	$(GO) build -o $(BIN)/grpc-echo ./cmd/grpc-echo

# The control plane on samples/grpc-echo, two proxyless gRPC echo servers (v1, v2) and a client, each beside
# its own agent, on loopback. Edit the weights in samples/grpc-echo/routes.yaml and watch the client's shares.
demo: build
	@hack/demo.sh

# Starts the control plane on the Bookinfo sample, on Istio's ports.
run: build
	@echo "meshd discovery on $(CONFIG_DIR): ADS on :15010, try:"
	@echo "  curl localhost:8080/ready"
	@echo "  curl localhost:8080/debug/adsz"
	@echo "  curl localhost:8080/debug/syncz"
	@echo "  curl localhost:15014/metrics | grep pilot_"
	$(BIN)/discovery discovery --configDir $(CONFIG_DIR) --meshConfig samples/mesh.yaml

# Everything CI runs. `unit` includes the tests against a real control plane
# (test/kube/...), which kube-tools builds first; MESHD_REQUIRE_KUBE=1 makes them
# fail, not skip, if it is missing.
test: export MESHD_REQUIRE_KUBE := 1
test: fmt-check vet system-deps kube-tools
	@$(MAKE) --no-print-directory unit

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# go test -json through hack/testsummary: the usual per-package lines, then "N passed, N failed, N skipped".
unit:
	@set -o pipefail; $(GO) test -json -race -count=1 -timeout 30m ./... | $(GO) run ./hack/testsummary

# Debian packages the tests use: iptables-restore and ip (the agent's capture rules are applied in a network
# namespace). Installed when missing and possible (root with apt); otherwise those tests skip, saying why.
system-deps:
	@if command -v iptables-restore >/dev/null && command -v ip >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing iptables and iproute2 (Debian)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null; \
	else echo "iptables-restore or ip missing and not installable here: the network-namespace tests will skip"; fi

# etcd, kube-apiserver and kube-controller-manager for test/kube/kubetest, built
# from the Go module proxy by hack/kube-tools and cached in
# ${MESHD_CACHE:-$HOME/.cache/meshd}/kube/<version>/bin. Minutes the first time.
kube-tools:
	@GO="$(GO)" hack/kube-tools.sh

# Only the suites that run against a real kube-apiserver.
e2e-kube: kube-tools
	MESHD_REQUIRE_KUBE=1 $(GO) test ./test/kube/... -count=1 -timeout 30m

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

# Load: LOAD_SERVICES services, LOAD_PROXIES simulated sidecars against bin/discovery, on loopback ports.
LOAD_SERVICES ?= 1000
LOAD_PROXIES  ?= 1000
LOAD_DIR      ?= $(or $(TMPDIR),/tmp)/meshd-load-mesh
load: build
	rm -rf $(LOAD_DIR) && $(BIN)/xdsload mesh --services $(LOAD_SERVICES) --out $(LOAD_DIR)
	@$(BIN)/discovery discovery --configDir $(LOAD_DIR) --meshConfig /nonexistent --grpcAddr 127.0.0.1:25010 \
		--httpAddr 127.0.0.1:28080 --monitoringAddr 127.0.0.1:25014 --secureGRPCAddr 127.0.0.1:25012 \
		--caSelfSignedDir $(LOAD_DIR)/ca --log_output_level default:warn & pid=$$!; \
	trap "kill $$pid 2>/dev/null; wait $$pid 2>/dev/null" EXIT; \
	for i in $$(seq 1 100); do curl -sf 127.0.0.1:28080/ready >/dev/null && break; sleep 0.1; done; \
	$(BIN)/xdsload run --addr 127.0.0.1:25010 --proxies $(LOAD_PROXIES) --meshServices $(LOAD_SERVICES); \
	ps -o rss=,time= -p $$pid | awk '{printf "discovery: rss %.0f MiB, cpu time %s\n", $$1/1024, $$2}'

clean:
	rm -rf $(BIN)
