// Package e2e runs meshd's discovery server as a user would (file mode, real ports on loopback) and drives it
// with real clients: grpc-go's xDS resolver and balancers, and Envoy-style ADS streams.
package e2e

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/pkg/xds"
)

// startMeshd runs the discovery server on loopback ports over dir.
func startMeshd(t *testing.T, dir string) *bootstrap.Server {
	t.Helper()
	args, err := bootstrap.DefaultArgs()
	if err != nil {
		t.Fatal(err)
	}
	args.GRPCAddr, args.HTTPAddr, args.MonitoringAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	args.SecureGRPCAddr, args.HTTPSAddr = "", ""
	args.ConfigDir = dir
	args.MeshConfigFile = ""
	args.Debounce = xds.DebounceOptions{After: 20 * time.Millisecond, Max: time.Second, EDS: true}
	args.ShutdownDuration = 2 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := bootstrap.NewServer(ctx, args, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		s.Wait()
	})
	return s
}

// writeFile replaces a file atomically, as editors and `kubectl`-style tools do.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, timeout, what, cond)
}
