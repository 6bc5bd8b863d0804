package clusters

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

func byName(rs []*discovery.Resource) map[string]*discovery.Resource {
	m := make(map[string]*discovery.Resource, len(rs))
	for _, r := range rs {
		m[r.Name] = r
	}
	return m
}

func outboundNames(rs []*discovery.Resource) []string {
	var out []string
	for _, r := range rs {
		if strings.HasPrefix(r.Name, "outbound|") {
			out = append(out, r.Name)
		}
	}
	return out
}

// replaceEndpoint swaps the endpoints at address for a copy with a new address: published endpoints are
// immutable, so changes are new objects, as a registry would publish them.
func (f *fixture) replaceEndpoint(address, newAddress string) {
	eps := make([]*model.Endpoint, len(f.endpoints))
	for i, e := range f.endpoints {
		if e.Address == address {
			c := *e
			c.Address = newAddress
			e = &c
		}
		eps[i] = e
	}
	f.endpoints = eps
}

func TestOutboundResourcesSharedAcrossProxiesAndPushes(t *testing.T) {
	f := bookinfo()
	dns := &model.Service{Hostname: "api.example.com", Name: "api.example.com", Namespace: "default", Resolution: model.DNSLB,
		Ports: []*model.Port{port("http", 80)}, MeshExternal: true}
	f.services = append(f.services, dns)
	f.endpoints = append(f.endpoints, &model.Endpoint{Hostname: dns.Hostname, ServicePort: 80, Address: "a.example.com", Port: 80})
	client := f.addService("client", "team", "10.96.6.1", port("http", 80))
	f.addPod(client, "client-1", "10.6.0.1", labels("app", "client"))
	f.addConfig(model.KindDestinationRule, "team", "reviews", &networking.DestinationRule{Host: reviewsHost})

	cache := util.NewCache(10000)
	cds, eds := NewCDS(cache), NewEDS(cache)
	push := f.push()
	pp := sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1")
	det := sidecar(t, push, "details-v1-1", "default", "10.0.1.1")
	team := sidecar(t, push, "client-1", "team", "10.6.0.1")

	ppCDS := generate(t, cds, pp, push)
	detCDS, teamCDS := byName(generate(t, cds, det, push)), byName(generate(t, cds, team, push))
	watched := outboundNames(ppCDS)
	ppEDS := byName(generate(t, eds, pp, push, watched...))
	detEDS := byName(generate(t, eds, det, push, watched...))

	ratings := "outbound|9080||" + fqdn("ratings", "default")
	reviews := "outbound|9080||" + reviewsHost
	for _, r := range ppCDS {
		if strings.HasPrefix(r.Name, "outbound|") || r.Name == model.PassthroughCluster || r.Name == model.BlackHoleCluster {
			if detCDS[r.Name] != r {
				t.Errorf("CDS %s: proxies in one namespace do not share the resource", r.Name)
			}
		}
	}
	for _, name := range watched {
		if detEDS[name] != ppEDS[name] {
			t.Errorf("EDS %s: proxies in one namespace do not share the resource", name)
		}
	}
	// team's own rule for reviews changes that cluster (its config metadata); ratings is still shared.
	if teamCDS[reviews] == byName(ppCDS)[reviews] {
		t.Error("a proxy under a different DestinationRule got the same reviews cluster")
	}
	if teamCDS[ratings] != byName(ppCDS)[ratings] {
		t.Error("ratings is not shared across namespaces with the same (no) DestinationRule")
	}

	// An endpoint-only push for ratings and the DNS service: only their EDS (and the DNS cluster, whose
	// endpoints are inline) change; everything else is served from the cache as is.
	f.replaceEndpoint("10.0.2.1", "10.0.2.99")
	f.replaceEndpoint("a.example.com", "b.example.com")
	push2 := f.endpointPush(push, fqdn("ratings", "default"), dns.Hostname)
	if push2.ConfigSeq() != push.ConfigSeq() {
		t.Fatal("an endpoint-only push must keep the config sequence")
	}
	ppEDS2 := byName(generate(t, eds, pp, push2, watched...))
	for _, name := range watched {
		changed := ppEDS2[name] != ppEDS[name]
		if want := name == ratings; changed != want {
			t.Errorf("EDS %s: changed=%v after an endpoint change of ratings only", name, changed)
		}
	}
	if a := decodeAssignments(t, []*discovery.Resource{ppEDS2[ratings]})[ratings]; viewOf(a)[0].eps[0] != "10.0.2.99:9080 HEALTHY 1 istio" {
		t.Errorf("ratings after the push = %+v", viewOf(a))
	}
	ppCDS2 := byName(generate(t, cds, pp, push2))
	dnsCluster := "outbound|80||" + dns.Hostname
	for _, r := range ppCDS {
		if strings.HasPrefix(r.Name, "inbound|") {
			continue // per proxy, never cached
		}
		changed := ppCDS2[r.Name] != r
		if want := r.Name == dnsCluster; changed != want {
			t.Errorf("CDS %s: changed=%v after an endpoint-only push", r.Name, changed)
		}
	}
	c := decodeClusters(t, []*discovery.Resource{ppCDS2[dnsCluster]})[dnsCluster]
	if got := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress(); got != "b.example.com" {
		t.Errorf("DNS cluster after its endpoints changed points at %q", got)
	}

	// A config push replaces the reviews rule: the cached clusters of the previous config are not reused.
	f.configs[0] = &model.Config{Kind: model.KindDestinationRule, Name: "reviews", Namespace: "default",
		Spec: &networking.DestinationRule{Host: "reviews", TrafficPolicy: &networking.TrafficPolicy{
			LoadBalancer: &networking.LoadBalancerSettings{LbPolicy: &networking.LoadBalancerSettings_Simple{Simple: networking.LoadBalancerSettings_RANDOM}},
		}}}
	push3 := f.push()
	cs := decodeClusters(t, generate(t, cds, sidecar(t, push3, "productpage-v1-1", "default", "10.0.0.1"), push3))
	if got := cs[reviews].LbPolicy.String(); got != "RANDOM" {
		t.Errorf("after the rule changed, reviews lb_policy = %s", got)
	}
	if cs["outbound|9080|v1|"+reviewsHost] != nil {
		t.Error("subset cluster of the removed subsets still served")
	}
}

// TestConcurrentGenerationMatchesUncached runs all four generators for many proxies at once over one shared
// cache (run with -race) and checks every result equals what an uncached generator builds.
func TestConcurrentGenerationMatchesUncached(t *testing.T) {
	push := grpcMesh().push()
	type client struct {
		proxy *model.Proxy
		grpc  bool
	}
	clients := []client{
		{sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1"), false},
		{sidecar(t, push, "reviews-v2-1", "default", "10.0.3.2"), false},
		{sidecar(t, push, "echo-1", "default", "10.7.0.1"), false},
		{grpcClient(t, push, "productpage-v1-1", "default", "10.0.0.1"), true},
		{grpcClient(t, push, "ratings-v1-1", "default", "10.0.2.1"), true},
	}
	watched := outboundNames(generate(t, NewCDS(nil), clients[0].proxy, push))
	gens := func(c *util.Cache, grpc bool) (model.Generator, model.Generator) {
		if grpc {
			return NewGRPCCDS(c), NewGRPCEDS(c)
		}
		return NewCDS(c), NewEDS(c)
	}
	fingerprint := func(cds, eds model.Generator, p *model.Proxy) string {
		var b strings.Builder
		for _, g := range []model.Generator{cds, eds} {
			rs, err := g.Generate(p, push, &model.WatchedResource{Names: watched}, &model.PushRequest{Full: true, Push: push})
			if err != nil {
				return err.Error()
			}
			for _, r := range rs {
				fmt.Fprintf(&b, "%s=%s\n", r.Name, r.Version)
			}
		}
		return b.String()
	}
	want := make([]string, len(clients))
	for i, c := range clients {
		cds, eds := gens(nil, c.grpc)
		want[i] = fingerprint(cds, eds, c.proxy)
	}

	shared := util.NewCache(10000)
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := 0; round < 5; round++ {
				for i, c := range clients {
					cds, eds := gens(shared, c.grpc)
					if got := fingerprint(cds, eds, c.proxy); got != want[i] {
						errs <- fmt.Sprintf("client %d: cached result differs from uncached:\n%s\nvs\n%s", i, got, want[i])
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
