# meshd: an istiod-compatible service-mesh control plane.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
CONFIG_DIR ?= samples/bookinfo

.PHONY: all build run test unit vet fmt-check bench clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/discovery ./cmd/discovery

# Starts the control plane on the Bookinfo sample, on Istio's ports.
run: build
	@echo "meshd discovery on $(CONFIG_DIR): ADS on :15010, try:"
	@echo "  curl localhost:8080/ready"
	@echo "  curl localhost:8080/debug/adsz"
	@echo "  curl localhost:8080/debug/syncz"
	@echo "  curl localhost:15014/metrics | grep pilot_"
	$(BIN)/discovery discovery --configDir $(CONFIG_DIR) --meshConfig samples/mesh.yaml

# Everything CI runs.
test: fmt-check vet unit

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

clean:
	rm -rf $(BIN)
