// Package e2e runs meshd's discovery server as a user would (file mode, real ports on loopback) and drives it
// with real clients: grpc-go's xDS resolver and balancers, and Envoy-style ADS streams.
package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/test/meshdtest"
)

// startMeshd runs the discovery server on loopback ports over dir.
func startMeshd(t *testing.T, dir string) *bootstrap.Server {
	t.Helper()
	return meshdtest.Start(t, dir, meshdtest.Options{})
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
