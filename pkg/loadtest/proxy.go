// Package loadtest drives a discovery server with many simulated Envoy sidecars, each on its own gRPC
// connection, subscribing the way Envoy does (wildcard CDS and LDS, then EDS and RDS by the names those
// reference) and acknowledging every response. It measures how long proxies take to get a complete config and
// how long a push takes to reach all of them. It is a measuring tool, not a data plane.
package loadtest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

const (
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	routeType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

// proxy is one simulated sidecar over Delta ADS.
type proxy struct {
	id      string
	stream  discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	started time.Time

	// have is what the proxy holds, by type then name.
	have map[string]map[string]*anypb.Any
	// subscribed are the EDS and RDS names requested so far.
	subscribed map[string]map[string]bool
	// answered marks the types that have had at least one response.
	answered map[string]bool
	complete time.Time
	stats    *Stats
}

func dial(ctx context.Context, addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
}

// run connects, subscribes and processes responses until ctx ends. ready is called once the proxy holds a
// complete config.
func (p *proxy) run(ctx context.Context, conn *grpc.ClientConn, nodeID, namespace string, ready func(time.Duration)) error {
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	p.stream = st
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": namespace, "ISTIO_VERSION": "loadtest"})
	p.started = time.Now()
	node := &core.Node{Id: nodeID, Metadata: md}
	for _, t := range []string{clusterType, listenerType} {
		if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: t}); err != nil {
			return err
		}
		node = nil
	}
	for {
		r, err := st.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := p.apply(r); err != nil {
			return err
		}
		if p.complete.IsZero() && p.isComplete() {
			p.complete = time.Now()
			ready(p.complete.Sub(p.started))
		}
	}
}

func (p *proxy) apply(r *discovery.DeltaDiscoveryResponse) error {
	size := 0
	m := p.have[r.TypeUrl]
	if m == nil {
		m = map[string]*anypb.Any{}
		p.have[r.TypeUrl] = m
	}
	for _, res := range r.Resources {
		m[res.Name] = res.Resource
		size += len(res.Resource.GetValue())
	}
	for _, n := range r.RemovedResources {
		delete(m, n)
	}
	p.answered[r.TypeUrl] = true
	p.stats.record(r.TypeUrl, len(r.Resources), size, r.SystemVersionInfo)
	if err := p.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}); err != nil {
		return err
	}
	switch r.TypeUrl {
	case clusterType:
		return p.subscribe(endpointType, edsNames(r.Resources))
	case listenerType:
		return p.subscribe(routeType, rdsNames(r.Resources))
	}
	return nil
}

func (p *proxy) subscribe(typeURL string, names []string) error {
	seen := p.subscribed[typeURL]
	if seen == nil {
		seen = map[string]bool{}
		p.subscribed[typeURL] = seen
	}
	var add []string
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			add = append(add, n)
		}
	}
	if len(add) == 0 {
		return nil
	}
	return p.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: add})
}

// isComplete: every type answered, and every subscribed EDS and RDS name held.
func (p *proxy) isComplete() bool {
	for _, t := range []string{clusterType, listenerType} {
		if !p.answered[t] {
			return false
		}
	}
	for _, t := range []string{endpointType, routeType} {
		for n := range p.subscribed[t] {
			if _, ok := p.have[t][n]; !ok {
				return false
			}
		}
	}
	return true
}

func edsNames(rs []*discovery.Resource) []string {
	var out []string
	for _, r := range rs {
		var c cluster.Cluster
		if r.Resource.UnmarshalTo(&c) == nil && c.GetType() == cluster.Cluster_EDS {
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.Name
			}
			out = append(out, name)
		}
	}
	return out
}

func rdsNames(rs []*discovery.Resource) []string {
	var out []string
	for _, r := range rs {
		var l listener.Listener
		if r.Resource.UnmarshalTo(&l) != nil {
			continue
		}
		for _, fc := range l.FilterChains {
			for _, f := range fc.Filters {
				var m hcm.HttpConnectionManager
				if f.GetTypedConfig().MessageIs(&m) && f.GetTypedConfig().UnmarshalTo(&m) == nil && m.GetRds() != nil {
					out = append(out, m.GetRds().RouteConfigName)
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Stats aggregates what all proxies received.
type Stats struct {
	mu        sync.Mutex
	responses map[string]int
	resources map[string]int
	bytes     map[string]int64
	// versions records, per push version, when the first and the last proxy received it.
	versions map[string]*versionSpread
}

type versionSpread struct {
	first, last time.Time
	proxies     int
}

func newStats() *Stats {
	return &Stats{responses: map[string]int{}, resources: map[string]int{}, bytes: map[string]int64{}, versions: map[string]*versionSpread{}}
}

func (s *Stats) record(typeURL string, n, size int, version string) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.responses[typeURL]++
	s.resources[typeURL] += n
	s.bytes[typeURL] += int64(size)
	v := s.versions[version]
	if v == nil {
		v = &versionSpread{first: now}
		s.versions[version] = v
	}
	v.last = now
	v.proxies++
}

// Resources returns how many resources of a type ("cds", "eds", "lds", "rds") all proxies received.
func (s *Stats) Resources(short string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for t, n := range s.resources {
		if shortType(t) == short {
			return n
		}
	}
	return 0
}

func shortType(t string) string {
	switch t {
	case clusterType:
		return "cds"
	case endpointType:
		return "eds"
	case listenerType:
		return "lds"
	case routeType:
		return "rds"
	}
	return t
}

func (s *Stats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := ""
	for _, t := range []string{clusterType, endpointType, listenerType, routeType} {
		out += fmt.Sprintf("  %s: %d responses, %.1f MiB\n", shortType(t), s.responses[t], float64(s.bytes[t])/(1<<20))
	}
	return out
}
