package xdsproxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/test/meshdtest"
)

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startMeshd runs the discovery server in file mode over dir, its plaintext gRPC port on grpcAddr
// ("127.0.0.1:0" for any port; a fixed address to come back where a previous run was). stop ends it early.
func startMeshd(t testing.TB, dir, grpcAddr string) (s *bootstrap.Server, stop func()) {
	t.Helper()
	return meshdtest.StartStoppable(t, dir, meshdtest.Options{GRPCAddr: grpcAddr})
}

// socketPath returns a fresh socket path, in a parent directory that does not exist yet, short enough for
// sun_path.
func socketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "xp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "proxy", "XDS")
}

// startProxy runs a proxy to upstream on a fresh socket until the test ends; the cleanup checks that Serve
// returned cleanly.
func startProxy(t testing.TB, upstream string) (*Proxy, string) {
	t.Helper()
	sock := socketPath(t)
	p, err := New(Options{
		Socket:      sock,
		Upstream:    upstream,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		Logger:      testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Serve did not return after its context ended")
		}
	})
	return p, sock
}

// unixTarget is the gRPC target of a socket path.
func unixTarget(sock string) string { return "unix://" + sock }

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

// echoRoute sends all traffic to one subset.
const echoRoute = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: default
spec:
  hosts:
  - echo
  http:
  - route:
    - destination: {host: echo, subset: %s}
`

// otherService is a second Service, added mid-test to see a push arrive through the proxy.
const otherService = `apiVersion: v1
kind: Service
metadata:
  name: other
  namespace: default
spec:
  clusterIP: 10.96.7.8
  ports:
  - name: http
    port: 8080
`

const (
	sidecarID    = "sidecar~127.0.0.5~client.default~default.svc.cluster.local"
	echoCluster  = "outbound|7070||echo.default.svc.cluster.local"
	otherCluster = "outbound|8080||other.default.svc.cluster.local"
)

var sidecarMeta = map[string]any{"NAMESPACE": "default", "ISTIO_VERSION": "1.28.0", "CLUSTER_ID": "Kubernetes"}

// platformDir writes a config directory with the echo Service (pods on unused ports: Envoy-style tests
// never connect to them).
func platformDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "echo.yaml"), fmt.Sprintf(meshdtest.EchoPlatform, 17070, 17071))
	return dir
}
