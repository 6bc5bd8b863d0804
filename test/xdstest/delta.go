// Package xdstest is a Delta ADS client for end-to-end tests: it subscribes the way Envoy does, ACKs every
// response and keeps the resources it holds, so tests can assert on what a sidecar would have.
package xdstest

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/pkg/model"
)

// Envoy is one Delta ADS stream.
type Envoy struct {
	t      testing.TB
	stream discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	resps  chan *discovery.DeltaDiscoveryResponse
	errs   chan error
	// Have holds the resources the client holds, by type URL and name.
	Have map[string]map[string]*discovery.Resource
}

// Dial opens a plaintext Delta stream to addr as nodeID with the given node metadata, and subscribes to CDS.
func Dial(t testing.TB, addr, nodeID string, metadata map[string]any) *Envoy {
	t.Helper()
	e, err := DialWith(t, addr, nodeID, metadata, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// DialWith is Dial with the given dial options (e.g. TLS credentials); it returns the stream's error instead
// of failing, so tests can assert on refusals.
func DialWith(t testing.TB, addr, nodeID string, metadata map[string]any, opts ...grpc.DialOption) (*Envoy, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	e := &Envoy{t: t, stream: st, resps: make(chan *discovery.DeltaDiscoveryResponse, 64), errs: make(chan error, 1),
		Have: map[string]map[string]*discovery.Resource{}}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				e.errs <- err
				return
			}
			e.resps <- r
		}
	}()
	md, err := structpb.NewStruct(metadata)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: nodeID, Metadata: md}, TypeUrl: model.ClusterType}); err != nil {
		if errors.Is(err, io.EOF) {
			// The server ended the stream before the send: its status comes with Recv.
			if rerr := e.Err(10 * time.Second); rerr != nil {
				return nil, rerr
			}
		}
		return nil, err
	}
	return e, nil
}

// Err waits for the stream to end and returns why (nil if it is still open after timeout).
func (e *Envoy) Err(timeout time.Duration) error {
	select {
	case err := <-e.errs:
		return err
	case <-time.After(timeout):
		return nil
	}
}

// Send sends a request on the stream.
func (e *Envoy) Send(r *discovery.DeltaDiscoveryRequest) {
	e.t.Helper()
	if err := e.stream.Send(r); err != nil {
		e.t.Fatal(err)
	}
}

// Subscribe adds names to a type's subscription (none: a wildcard subscription).
func (e *Envoy) Subscribe(typeURL string, names ...string) {
	e.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: names})
}

// Next returns the next response, applied to Have and ACKed.
func (e *Envoy) Next(timeout time.Duration) *discovery.DeltaDiscoveryResponse {
	e.t.Helper()
	select {
	case r := <-e.resps:
		m := e.Have[r.TypeUrl]
		if m == nil {
			m = map[string]*discovery.Resource{}
			e.Have[r.TypeUrl] = m
		}
		for _, res := range r.Resources {
			m[res.Name] = res
		}
		for _, n := range r.RemovedResources {
			delete(m, n)
		}
		e.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
		return r
	case err := <-e.errs:
		e.t.Fatalf("ADS stream ended: %v", err)
	case <-time.After(timeout):
		e.t.Fatalf("no ADS response within %v", timeout)
	}
	return nil
}

// Drain applies the responses already received, without waiting.
func (e *Envoy) Drain() {
	for len(e.resps) > 0 {
		e.Next(time.Second)
	}
}

// Names returns the names held for a type, sorted.
func (e *Envoy) Names(typeURL string) []string { return model.SortedKeys(e.Have[typeURL]) }

// Endpoints returns the addresses in the held assignment of a cluster, sorted.
func (e *Envoy) Endpoints(cluster string) []string {
	r := e.Have[model.EndpointType][cluster]
	if r == nil {
		return nil
	}
	var cla endpoint.ClusterLoadAssignment
	if err := r.Resource.UnmarshalTo(&cla); err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, l := range cla.Endpoints {
		for _, ep := range l.LbEndpoints {
			out = append(out, ep.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
		}
	}
	return model.SortedKeys(setOf(out))
}

func setOf(s []string) map[string]bool {
	m := make(map[string]bool, len(s))
	for _, x := range s {
		m[x] = true
	}
	return m
}

// RouteWeights returns, for the virtual host vhost of the held route configuration name, the clusters its
// routes (or only the route named routeName, when not empty) send to with their weights; a single-cluster
// route counts as weight 100.
func (e *Envoy) RouteWeights(name, vhost, routeName string) map[string]uint32 {
	e.t.Helper()
	r := e.Have[model.RouteType][name]
	if r == nil {
		e.t.Fatalf("route configuration %s not held", name)
	}
	var rc route.RouteConfiguration
	if err := r.Resource.UnmarshalTo(&rc); err != nil {
		e.t.Fatal(err)
	}
	out := map[string]uint32{}
	for _, vh := range rc.VirtualHosts {
		if vh.Name != vhost {
			continue
		}
		for _, rt := range vh.Routes {
			if routeName != "" && rt.Name != routeName {
				continue
			}
			for _, wc := range rt.GetRoute().GetWeightedClusters().GetClusters() {
				out[wc.Name] = wc.Weight.GetValue()
			}
			if c := rt.GetRoute().GetCluster(); c != "" {
				out[c] = 100
			}
		}
	}
	return out
}

// ResourceNames lists the names of a response's (changed) resources, sorted.
func ResourceNames(r *discovery.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.Resources {
		out = append(out, res.Name)
	}
	return model.SortedKeys(setOf(out))
}
