package loadtest_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/pkg/loadtest"
)

// TestLoadRunAgainstARealServer: the tool's simulated sidecars each reach a complete config from a real
// discovery server serving a generated mesh, over real gRPC.
func TestLoadRunAgainstARealServer(t *testing.T) {
	dir := t.TempDir()
	ips, err := loadtest.WriteMesh(dir, 30, 2)
	if err != nil {
		t.Fatal(err)
	}
	if got := loadtest.MeshPodIPs(30, 2); !slices.Equal(got, ips) {
		t.Fatalf("MeshPodIPs = %v, WriteMesh wrote %v", got, ips)
	}
	args, err := bootstrap.DefaultArgs()
	if err != nil {
		t.Fatal(err)
	}
	args.GRPCAddr, args.HTTPAddr, args.MonitoringAddr, args.SecureGRPCAddr, args.HTTPSAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "", ""
	args.ConfigDir, args.MeshConfigFile = dir, ""
	ctx, cancel := context.WithCancel(context.Background())
	s, err := bootstrap.NewServer(ctx, args, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); s.Wait() }()

	res, err := loadtest.Run(context.Background(), loadtest.Options{
		Addr: s.GRPCListener.String(), Proxies: 20, Namespace: "ns0", PodIPs: ips, Timeout: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.ToComplete) != 20 || res.Percentile(100) <= 0 {
		t.Fatalf("complete: %d of 20", len(res.ToComplete))
	}
	// 30 services, each with a default and two subset clusters, all EDS: every proxy holds 90 assignments.
	if got := res.Stats.Resources("eds"); got != 20*90 {
		t.Errorf("EDS resources received = %d, want %d", got, 20*90)
	}
	out := res.String()
	for _, want := range []string{"20 proxies complete", "cds: 20 responses", "lds: 20 responses"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
