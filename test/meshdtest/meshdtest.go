// Package meshdtest runs meshd's discovery server in-process for tests: file mode over a directory, on
// loopback ports chosen by the kernel.
package meshdtest

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/pkg/xds"
)

// Options adjust the server; the zero value is plaintext ADS, HTTP and monitoring on 127.0.0.1:0.
type Options struct {
	// GRPCAddr replaces 127.0.0.1:0, e.g. to restart a server on the same port.
	GRPCAddr string
	// Secure serves the secure port (ADS + CA) on 127.0.0.1:0 with a self-signed root in a temporary directory.
	Secure bool
}

// Start runs meshd over dir until the test ends. It returns once every port listens and the first push
// context is built.
func Start(t testing.TB, dir string, o Options) *bootstrap.Server {
	t.Helper()
	s, stop := start(t, dir, o)
	t.Cleanup(stop)
	return s
}

// StartStoppable is Start, also returning a stop function that shuts the server down and waits for it (safe to
// call more than once), for tests of what happens while it is gone.
func StartStoppable(t testing.TB, dir string, o Options) (*bootstrap.Server, func()) {
	t.Helper()
	s, stop := start(t, dir, o)
	t.Cleanup(stop)
	return s, stop
}

func start(t testing.TB, dir string, o Options) (*bootstrap.Server, func()) {
	args, err := bootstrap.DefaultArgs()
	if err != nil {
		t.Fatal(err)
	}
	args.GRPCAddr, args.HTTPAddr, args.MonitoringAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if o.GRPCAddr != "" {
		args.GRPCAddr = o.GRPCAddr
	}
	args.SecureGRPCAddr, args.HTTPSAddr = "", ""
	if o.Secure {
		args.SecureGRPCAddr, args.CASelfSignedDir = "127.0.0.1:0", t.TempDir()
	}
	args.ConfigDir, args.MeshConfigFile, args.CACertsDir = dir, "", ""
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
	stopped := false
	return s, func() {
		if !stopped {
			stopped = true
			cancel()
			s.Wait()
		}
	}
}
