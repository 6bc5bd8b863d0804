// Package doubletest builds the proxy double (test/proxydouble) and writes Envoy bootstraps it can run with in
// parallel tests: the bootstrap's fixed ports (15000, 15090, 15021) are replaced with free loopback ports.
package doubletest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshd/meshd/pkg/agent/bootstrap"
	"github.com/meshd/meshd/pkg/agent/config"
)

// Package is the double's import path.
const Package = "github.com/meshd/meshd/test/proxydouble"

// Build compiles the double into dir and returns the binary's path. Linking takes seconds, so call it once per
// test binary (from TestMain).
func Build(dir string) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "proxydouble")
	cmd := exec.Command(gobin, "build", "-o", out, Package)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s: %w: %s", Package, err, stderr.String())
	}
	return out, nil
}

// Main is a TestMain body: it builds the double into a temporary directory, stores its path in *binary, runs
// the tests and removes the directory. Use it as os.Exit(doubletest.Main(m, &binary)).
func Main(m *testing.M, binary *string) int {
	dir, err := os.MkdirTemp("", "proxydouble")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if *binary, err = Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// Options describe the proxy a bootstrap is written for.
type Options struct {
	// Dir receives envoy-rev.json (the agent's CONFIG_PATH).
	Dir string
	// XDSSocket is the Unix socket the double opens ADS on (the agent's XDS proxy).
	XDSSocket string
	// SotW selects state-of-the-world ADS (ISTIO_DELTA_XDS=false) instead of Delta.
	SotW bool
	// StatusPort is the agent's status port, where the readiness listener forwards /healthz/ready; 0 picks a
	// free port nobody serves.
	StatusPort int
}

// Bootstrap is a written bootstrap and how to reach the double that runs it.
type Bootstrap struct {
	// Path is envoy-rev.json; Args is Envoy's command line for it (bootstrap.EnvoyArgs).
	Path string
	Args []string
	// AdminAddr, PrometheusAddr and ReadinessAddr are 127.0.0.1:port for the admin API and the static
	// listeners that stand for 15090 and 15021.
	AdminAddr, PrometheusAddr, ReadinessAddr string
	// Config is the agent config the bootstrap was generated from.
	Config *config.Config
}

// Write generates a sidecar's bootstrap with bootstrap.EnvoyProto and moves every port to a free loopback one.
func Write(opts Options) (*Bootstrap, error) {
	ports, err := FreePorts(4)
	if err != nil {
		return nil, err
	}
	admin, prom, ready, status := ports[0], ports[1], ports[2], ports[3]
	if opts.StatusPort != 0 {
		status = opts.StatusPort
	}
	env := map[string]string{
		"POD_NAME":        "app-7d4b9c8f6d-x2k4p",
		"POD_NAMESPACE":   "default",
		"INSTANCE_IP":     "127.0.0.1",
		"SERVICE_ACCOUNT": "app",
		"ISTIO_DELTA_XDS": strconv.FormatBool(!opts.SotW),
		"PROXY_CONFIG": fmt.Sprintf(`{"configPath":%q,"proxyAdminPort":%d,"statusPort":%d,"drainDuration":"1s"}`,
			opts.Dir, admin, status),
	}
	cfg, err := config.FromEnv(func(k string) string { return env[k] }, config.Args{Argv: []string{"proxy", "sidecar"}})
	if err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	cfg.XDSSocket = opts.XDSSocket
	cfg.SDSSocket = filepath.Join(opts.Dir, "SDS")
	b, err := bootstrap.EnvoyProto(cfg)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	moved := map[uint32]int{bootstrap.EnvoyPromPort: prom, bootstrap.EnvoyStatusPort: ready}
	for _, l := range b.GetStaticResources().GetListeners() {
		sa := l.GetAddress().GetSocketAddress()
		port, ok := moved[sa.GetPortValue()]
		if !ok {
			return nil, fmt.Errorf("listener %s on unexpected port %d", l.GetName(), sa.GetPortValue())
		}
		sa.Address = "127.0.0.1"
		sa.PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(port)}
	}
	raw, err := protojson.MarshalOptions{UseProtoNames: true, Multiline: true}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("marshal bootstrap: %w", err)
	}
	if err := os.WriteFile(cfg.BootstrapPath(), raw, 0o600); err != nil {
		return nil, fmt.Errorf("write bootstrap: %w", err)
	}
	addr := func(p int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)) }
	return &Bootstrap{
		Path: cfg.BootstrapPath(), Args: bootstrap.EnvoyArgs(cfg),
		AdminAddr: addr(admin), PrometheusAddr: addr(prom), ReadinessAddr: addr(ready),
		Config: cfg,
	}, nil
}

// FreePorts returns n distinct loopback ports that were free a moment ago. The kernel picks ephemeral ports at
// random, so reuse by another process before the caller binds them is unlikely.
func FreePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		// Held open until all are chosen, so the n ports differ.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
