package xdsproxy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshd/meshd/pkg/model"
)

// benchMesh writes n Services, each with a Pod and a DestinationRule of three subsets, as file-mode YAML.
func benchMesh(b *testing.B, n int) string {
	b.Helper()
	var sb strings.Builder
	for i := range n {
		fmt.Fprintf(&sb, `apiVersion: v1
kind: Service
metadata: {name: svc%[1]d, namespace: default}
spec:
  clusterIP: 10.96.%[2]d.%[3]d
  selector: {app: svc%[1]d}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: svc%[1]d-v1, namespace: default, labels: {app: svc%[1]d, version: v1}}
spec: {containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 10.244.%[2]d.%[3]d, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: svc%[1]d, namespace: default}
spec:
  host: svc%[1]d
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, {name: v3, labels: {version: v3}}]
---
`, i, i/250, i%250+1)
	}
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	return dir
}

// fetchConfig opens a SotW stream as an Envoy sidecar would and reads its clusters and listeners, ACKing each.
func fetchConfig(b *testing.B, ads discovery.AggregatedDiscoveryServiceClient, node *corev3.Node) (bytes int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, t := range []string{model.ClusterType, model.ListenerType} {
		if err := st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: t}); err != nil {
			b.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range resp.Resources {
			bytes += len(r.GetValue())
		}
		if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: t, ResponseNonce: resp.Nonce, VersionInfo: resp.VersionInfo}); err != nil {
			b.Fatal(err)
		}
	}
	return bytes
}

// BenchmarkFullConfig measures what the XDS proxy adds to a sidecar's initial fetch of clusters and listeners
// (500 services: 2000 clusters) against the same fetch straight from the control plane.
func BenchmarkFullConfig(b *testing.B) {
	s, _ := startMeshd(b, benchMesh(b, 500), "127.0.0.1:0")
	_, sock := startProxy(b, s.GRPCListener.String())
	node := &corev3.Node{Id: "sidecar~10.244.0.1~svc0-v1.default~default.svc.cluster.local"}
	for _, c := range []struct{ name, target string }{{"direct", s.GRPCListener.String()}, {"via-proxy", unixTarget(sock)}} {
		b.Run(c.name, func(b *testing.B) {
			conn, err := grpc.NewClient(c.target, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
			fetchConfig(b, ads, node) // warm the control plane's caches and the connection
			b.ResetTimer()
			var bytes int
			for b.Loop() {
				bytes = fetchConfig(b, ads, node)
			}
			b.SetBytes(int64(bytes))
		})
	}
}
