// Package debugtap serves the agent's port 15004: GET /debug/<endpoint>?<query> is forwarded to the control
// plane's debug endpoint of that name as a debug request over ADS (type istio.io/debug/<endpoint>), on the
// agent's own authenticated connection. Workloads can thus read their own sync status and config dump without
// reaching the control plane's HTTP port, which is not exposed outside its pod.
package debugtap

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"

	"github.com/meshd/meshd/pkg/model"
)

// Handler forwards debug requests over conn as node.
func Handler(conn grpc.ClientConnInterface, node *corev3.Node, timeout time.Duration) http.Handler {
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		endpoint, ok := strings.CutPrefix(r.URL.Path, "/debug/")
		if !ok || endpoint == "" {
			http.Error(w, "ask for /debug/<endpoint>, e.g. /debug/syncz or /debug/config_dump", http.StatusNotFound)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		code, body, err := ask(ctx, ads, node, endpoint, r.URL.RawQuery)
		if err != nil {
			http.Error(w, "control plane: "+err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = w.Write(body)
	})
}

// ask sends one debug request on its own short-lived stream: the answer is a snapshot, and the stream must
// not outlive the HTTP request.
func ask(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient, node *corev3.Node, endpoint, query string) (int, []byte, error) {
	stream, err := ads.StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return 0, nil, err
	}
	req := &discovery.DiscoveryRequest{Node: node, TypeUrl: model.DebugTypePrefix + endpoint}
	if query != "" {
		req.ResourceNames = []string{query}
	}
	if err := stream.Send(req); err != nil {
		return 0, nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return 0, nil, err
	}
	if len(resp.Resources) != 1 {
		return 0, nil, fmt.Errorf("debug answer with %d resources", len(resp.Resources))
	}
	code, err := strconv.Atoi(resp.VersionInfo)
	if err != nil || code < 100 || code > 599 {
		code = http.StatusOK
	}
	return code, resp.Resources[0].GetValue(), nil
}
