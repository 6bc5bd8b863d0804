package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds"

	"github.com/meshd/meshd/test/meshdtest"
)

const echoRoutes = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: echo
  namespace: default
spec:
  hosts:
  - echo
  http:
  - route:
    - destination: {host: echo, subset: v1}
      weight: %d
    - destination: {host: echo, subset: v2}
      weight: %d
`

// TestGRPCClientFollowsVirtualServiceWeights is the proxyless promise end to end: a real grpc-go xDS client
// resolves xds:///echo.default.svc.cluster.local:7070 through meshd and calls real backends, splitting by the
// VirtualService weights, and follows a weight change made by editing the file.
func TestGRPCClientFollowsVirtualServiceWeights(t *testing.T) {
	p1 := meshdtest.StartEchoBackend(t, "127.0.0.2:0", "v1")
	p2 := meshdtest.StartEchoBackend(t, "127.0.0.3:0", "v2")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "echo.yaml"), fmt.Sprintf(meshdtest.EchoPlatform, p1, p2))
	routes := filepath.Join(dir, "routes.yaml")
	writeFile(t, routes, fmt.Sprintf(echoRoutes, 80, 20))
	s := startMeshd(t, dir)

	bootstrap := fmt.Sprintf(`{
	  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
	  "node": {"id": "sidecar~127.0.0.1~client.default~default.svc.cluster.local",
	           "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"}}
	}`, s.GRPCListener.String())
	resolver, err := xds.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///echo.default.svc.cluster.local:7070",
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := testgrpc.NewTestServiceClient(conn)

	share := func(n int) (v1 float64) {
		counts := map[string]int{}
		for range n {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
			cancel()
			if err != nil {
				t.Fatalf("RPC through meshd failed: %v", err)
			}
			counts[resp.Hostname]++
		}
		return float64(counts["v1"]) / float64(n)
	}
	if got := share(500); got < 0.72 || got > 0.88 {
		t.Fatalf("v1 share = %.2f, want about 0.80 (VirtualService weights 80/20)", got)
	}

	writeFile(t, routes, fmt.Sprintf(echoRoutes, 0, 100))
	eventually(t, 20*time.Second, "all traffic on v2 after the weight edit", func() bool { return share(50) == 0 })

	// The client shows up in the debug endpoints, synced on every type it watches.
	_, body := httpGet(t, "http://"+s.HTTPListener.String()+"/debug/syncz")
	for _, want := range []string{`"proxy": "client.default"`, `"lds": "SYNCED"`, `"rds": "SYNCED"`, `"cds": "SYNCED"`, `"eds": "SYNCED"`} {
		if !strings.Contains(body, want) {
			t.Errorf("/debug/syncz lacks %s:\n%s", want, body)
		}
	}
}
