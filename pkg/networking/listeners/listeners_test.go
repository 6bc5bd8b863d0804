package listeners_test

import (
	"net"
	"slices"
	"strconv"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/listeners"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
	"github.com/meshd/meshd/pkg/networking/util"
)

const mysqlFQDN = "mysqldb.default.svc.cluster.local"

// lds runs the LDS generator and returns the decoded listeners by name, checking that each validates deeply
// and that names and addresses are unique.
func lds(t testing.TB, g *listeners.Generator, proxy *model.Proxy, push *model.PushContext, w *model.WatchedResource) map[string]*listener.Listener {
	t.Helper()
	if w == nil {
		w = &model.WatchedResource{TypeURL: model.ListenerType, Wildcard: true}
	}
	res, err := g.Generate(proxy, push, w, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*listener.Listener{}
	addrs := map[string]string{}
	for _, r := range res {
		l := &listener.Listener{}
		if err := r.GetResource().UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		if r.GetName() != l.GetName() {
			t.Errorf("resource %q holds listener %q", r.GetName(), l.GetName())
		}
		if _, dup := out[l.GetName()]; dup {
			t.Errorf("duplicate listener name %q", l.GetName())
		}
		out[l.GetName()] = l
		if err := routestest.ValidateDeep(l); err != nil {
			t.Errorf("listener %s invalid: %v", l.GetName(), err)
		}
		// Envoy rejects a listener with two chains of the same match.
		fcs := l.GetFilterChains()
		for i := range fcs {
			for j := i + 1; j < len(fcs); j++ {
				if proto.Equal(fcs[i].GetFilterChainMatch(), fcs[j].GetFilterChainMatch()) {
					t.Errorf("listener %s: chains %q and %q have the same match %v", l.GetName(), fcs[i].GetName(), fcs[j].GetName(), fcs[i].GetFilterChainMatch())
				}
			}
		}
		if sa := l.GetAddress().GetSocketAddress(); sa != nil {
			addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
			if prev, dup := addrs[addr]; dup {
				t.Errorf("listeners %q and %q share address %s", prev, l.GetName(), addr)
			}
			addrs[addr] = l.GetName()
		}
	}
	return out
}

func names(m map[string]*listener.Listener) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func httpConnectionManager(t testing.TB, fc *listener.FilterChain) *hcm.HttpConnectionManager {
	t.Helper()
	fs := fc.GetFilters()
	if len(fs) != 1 || fs[0].GetName() != listeners.HTTPConnectionManagerName {
		t.Fatalf("filter chain %q: filters %v, want one HTTP connection manager", fc.GetName(), fs)
	}
	m := &hcm.HttpConnectionManager{}
	if err := fs[0].GetTypedConfig().UnmarshalTo(m); err != nil {
		t.Fatal(err)
	}
	return m
}

func tcpProxy(t testing.TB, fc *listener.FilterChain) *tcpproxy.TcpProxy {
	t.Helper()
	fs := fc.GetFilters()
	if len(fs) != 1 || fs[0].GetName() != listeners.TCPProxyName {
		t.Fatalf("filter chain %q: filters %v, want one tcp_proxy", fc.GetName(), fs)
	}
	p := &tcpproxy.TcpProxy{}
	if err := fs[0].GetTypedConfig().UnmarshalTo(p); err != nil {
		t.Fatal(err)
	}
	return p
}

func httpFilterNames(m *hcm.HttpConnectionManager) []string {
	var out []string
	for _, f := range m.GetHttpFilters() {
		out = append(out, f.GetName())
	}
	return out
}

func socket(ip string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}}
}

func assertProto(t testing.TB, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("%s:\n got: %v\nwant: %v", what, got, want)
	}
}

// A pure Bookinfo sidecar (four HTTP services on 9080) has exactly the two virtual listeners and one HTTP
// listener, whose connection manager asks RDS for route "9080".
func TestSidecarListenersBookinfo(t *testing.T) {
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services[:4], pods, nil, nil)
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	ls := lds(t, listeners.NewGenerator(nil), proxy, push, nil)
	if got, want := names(ls), []string{"0.0.0.0_9080", "virtualInbound", "virtualOutbound"}; !slices.Equal(got, want) {
		t.Fatalf("listeners = %v, want %v", got, want)
	}

	out := ls["0.0.0.0_9080"]
	assertProto(t, "address", out.GetAddress(), socket("0.0.0.0", 9080))
	if out.GetBindToPort() == nil || out.GetBindToPort().GetValue() || out.GetTrafficDirection() != core.TrafficDirection_OUTBOUND {
		t.Errorf("bind_to_port = %v, direction %v", out.GetBindToPort(), out.GetTrafficDirection())
	}
	m := httpConnectionManager(t, out.GetFilterChains()[0])
	if m.GetStatPrefix() != "outbound_0.0.0.0_9080" || m.GetCodecType() != hcm.HttpConnectionManager_AUTO ||
		m.GetUseRemoteAddress() == nil || m.GetUseRemoteAddress().GetValue() ||
		!m.GetGenerateRequestId().GetValue() || !m.GetNormalizePath().GetValue() {
		t.Errorf("connection manager = %v", m)
	}
	rds := m.GetRds()
	if rds.GetRouteConfigName() != "9080" || rds.GetConfigSource().GetAds() == nil || rds.GetConfigSource().GetResourceApiVersion() != core.ApiVersion_V3 {
		t.Errorf("rds = %v", rds)
	}
	// The fault filter must precede the router for routes' fault injection to work; the router is last.
	if got := httpFilterNames(m); !slices.Equal(got, []string{"envoy.filters.http.fault", "envoy.filters.http.cors", "envoy.filters.http.router"}) {
		t.Errorf("http filters = %v", got)
	}

	vo := ls["virtualOutbound"]
	assertProto(t, "virtualOutbound address", vo.GetAddress(), socket("0.0.0.0", 15001))
	if !vo.GetUseOriginalDst().GetValue() || vo.GetTrafficDirection() != core.TrafficDirection_OUTBOUND {
		t.Errorf("virtualOutbound = %v", vo)
	}
	last := vo.GetFilterChains()[len(vo.GetFilterChains())-1]
	if last.GetFilterChainMatch() != nil {
		t.Errorf("virtualOutbound catch-all chain has a match: %v", last.GetFilterChainMatch())
	}
	if p := tcpProxy(t, last); p.GetCluster() != model.PassthroughCluster || p.GetStatPrefix() != model.PassthroughCluster {
		t.Errorf("virtualOutbound catch-all = %v", p)
	}
}

// The inbound listener has one chain per target port (HTTP: connection manager with inline routes to the
// inbound cluster), and a final passthrough chain without match.
func TestSidecarVirtualInbound(t *testing.T) {
	services, pods := routestest.Bookinfo()
	// reviews also serves a TCP port, and a second service shares its HTTP port.
	services[1] = routestest.Service("reviews", "default", "10.0.0.2",
		&model.Port{Name: "http", Port: 9080, Protocol: model.ProtocolHTTP},
		&model.Port{Name: "tcp-admin", Port: 7000, Protocol: model.ProtocolTCP})
	alias := routestest.HTTPService("reviews-alias", "default", "10.0.0.30", 9080)
	alias.Selector = map[string]string{"app": "reviews"}
	services = append(services, alias)
	push := routestest.Push(services, pods, nil, nil)
	proxy := routestest.Sidecar(t, push, "reviews-v1", "default", "10.1.0.2", nil)
	vi := lds(t, listeners.NewGenerator(nil), proxy, push, nil)["virtualInbound"]

	assertProto(t, "virtualInbound address", vi.GetAddress(), socket("0.0.0.0", 15006))
	if vi.GetTrafficDirection() != core.TrafficDirection_INBOUND {
		t.Errorf("direction = %v", vi.GetTrafficDirection())
	}
	if vi.GetUseOriginalDst().GetValue() {
		t.Error("virtualInbound hands connections off (use_original_dst): inbound 9080 would reach the outbound 0.0.0.0_9080")
	}
	// Default PERMISSIVE: the TLS inspector tells mTLS from plaintext (chains per mode: see security_test.go).
	if lf := vi.GetListenerFilters(); len(lf) != 2 || lf[0].GetName() != "envoy.filters.listener.original_dst" ||
		lf[1].GetName() != listeners.TLSInspectorName {
		t.Errorf("listener filters = %v", lf)
	}
	var ports []uint32
	chains := map[uint32]*listener.FilterChain{} // the plaintext chain of each port
	for _, fc := range vi.GetFilterChains() {
		if p := fc.GetFilterChainMatch().GetDestinationPort(); p != nil {
			if !slices.Contains(ports, p.GetValue()) {
				ports = append(ports, p.GetValue())
			}
			if fc.GetFilterChainMatch().GetTransportProtocol() != "tls" {
				chains[p.GetValue()] = fc
			}
		}
	}
	if !slices.Equal(ports, []uint32{15006, 7000, 9080}) {
		t.Errorf("chain ports = %v, want [15006 7000 9080] (chains per distinct target port)", ports)
	}

	m := httpConnectionManager(t, chains[9080])
	if m.GetStatPrefix() != "inbound_0.0.0.0_9080" {
		t.Errorf("stat prefix = %q", m.GetStatPrefix())
	}
	rc := m.GetRouteConfig()
	if len(rc.GetVirtualHosts()) != 1 {
		t.Fatalf("inline routes = %v", rc)
	}
	vh := rc.GetVirtualHosts()[0]
	if vh.GetName() != "inbound|http|9080" || !slices.Equal(vh.GetDomains(), []string{"*"}) {
		t.Errorf("vhost = %s %v", vh.GetName(), vh.GetDomains())
	}
	r := vh.GetRoutes()[0]
	if r.GetMatch().GetPrefix() != "/" || r.GetRoute().GetCluster() != "inbound|9080||" || r.GetRoute().GetTimeout().AsDuration() != 0 || r.GetRoute().GetTimeout() == nil {
		t.Errorf("inbound route = %v", r)
	}
	if got := httpFilterNames(m); got[len(got)-1] != "envoy.filters.http.router" {
		t.Errorf("router is not last: %v", got)
	}
	if p := tcpProxy(t, chains[7000]); p.GetCluster() != "inbound|7000||" {
		t.Errorf("tcp inbound = %v", p)
	}
	last := vi.GetFilterChains()[len(vi.GetFilterChains())-1]
	if last.GetFilterChainMatch().GetDestinationPort() != nil || last.GetName() != listeners.InboundPassthroughFilterChain ||
		tcpProxy(t, last).GetCluster() != model.InboundPassthroughCluster {
		t.Errorf("last chain = %v, want passthrough for any port", last)
	}
}

// TCP services get a listener on their VIP; the VirtualService's TCP route splits by weight.
func TestSidecarTCPListeners(t *testing.T) {
	services, pods := routestest.Bookinfo()
	vs := routestest.Config(model.KindVirtualService, "default", "mysqldb", &networking.VirtualService{
		Hosts: []string{"mysqldb"},
		Tcp: []*networking.TCPRoute{
			{Match: []*networking.L4MatchAttributes{{Port: 3307}}, Route: []*networking.RouteDestination{{Destination: &networking.Destination{Host: "mysqldb", Subset: "v3"}}}},
			{Route: []*networking.RouteDestination{
				{Destination: &networking.Destination{Host: "mysqldb", Subset: "v1"}, Weight: 70},
				{Destination: &networking.Destination{Host: "mysqldb", Subset: "v2"}, Weight: 30},
			}},
		},
	})
	push := routestest.Push(services, pods, []*model.Config{vs}, nil)
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	ls := lds(t, listeners.NewGenerator(nil), proxy, push, nil)
	if got, want := names(ls), []string{"0.0.0.0_8000", "0.0.0.0_9080", "10.0.0.10_3306", "virtualInbound", "virtualOutbound"}; !slices.Equal(got, want) {
		t.Fatalf("listeners = %v, want %v", got, want)
	}
	l := ls["10.0.0.10_3306"]
	assertProto(t, "address", l.GetAddress(), socket("10.0.0.10", 3306))
	if l.GetBindToPort().GetValue() || l.GetTrafficDirection() != core.TrafficDirection_OUTBOUND {
		t.Errorf("listener = %v", l)
	}
	assertProto(t, "weighted", tcpProxy(t, l.GetFilterChains()[0]).GetWeightedClusters(), &tcpproxy.TcpProxy_WeightedCluster{
		Clusters: []*tcpproxy.TcpProxy_WeightedCluster_ClusterWeight{
			{Name: "outbound|3306|v1|" + mysqlFQDN, Weight: 70},
			{Name: "outbound|3306|v2|" + mysqlFQDN, Weight: 30},
		},
	})

	// Without VirtualService: the service's cluster, named as CDS names it.
	push = routestest.Push(services, pods, nil, nil)
	ls = lds(t, listeners.NewGenerator(nil), routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil), push, nil)
	if p := tcpProxy(t, ls["10.0.0.10_3306"].GetFilterChains()[0]); p.GetCluster() != "outbound|3306||"+mysqlFQDN || p.GetStatPrefix() != "outbound|3306||"+mysqlFQDN {
		t.Errorf("tcp_proxy = %v", p)
	}
}

// REGISTRY_ONLY: unknown destinations are black-holed by virtualOutbound.
func TestSidecarRegistryOnly(t *testing.T) {
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services, pods, nil, routestest.RegistryOnlyMesh())
	ls := lds(t, listeners.NewGenerator(nil), routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil), push, nil)
	vo := ls["virtualOutbound"]
	last := vo.GetFilterChains()[len(vo.GetFilterChains())-1]
	if p := tcpProxy(t, last); p.GetCluster() != model.BlackHoleCluster || p.GetStatPrefix() != model.BlackHoleCluster {
		t.Errorf("catch-all = %v, want BlackHoleCluster", p)
	}
}

// Port and address conflicts never produce two listeners with one name or address: a TCP service without VIP
// yields to an HTTP listener on its port, and to an earlier one; services sharing a VIP:port get one listener;
// the sidecar's own ports are left alone; TLS services without VIP share a port by SNI.
func TestSidecarListenerConflicts(t *testing.T) {
	services, pods := routestest.Bookinfo()
	tcp := func(name string, port int) *model.Port {
		return &model.Port{Name: "tcp-" + name, Port: port, Protocol: model.ProtocolTCP}
	}
	headlessOnHTTPPort := routestest.Service("legacy", "default", "", tcp("a", 9080))
	headlessA := routestest.Service("cache-a", "default", "", tcp("c", 6379))
	headlessB := routestest.Service("cache-b", "default", "", tcp("c", 6379))
	sharedVIP1 := routestest.Service("db-1", "default", "10.0.0.50", tcp("db", 5432))
	sharedVIP2 := routestest.Service("db-2", "default", "10.0.0.50", tcp("db", 5432))
	onAdmin := routestest.HTTPService("weird", "default", "10.0.0.51", 15001)
	onProm := routestest.Service("prom", "default", "", tcp("p", 15090))
	ext1 := &model.Service{Hostname: "api.example.com", Namespace: "default", MeshExternal: true,
		Ports: []*model.Port{{Name: "https", Port: 443, Protocol: model.ProtocolHTTPS}}}
	ext2 := &model.Service{Hostname: "*.wikipedia.org", Namespace: "default", MeshExternal: true,
		Ports: []*model.Port{{Name: "tls", Port: 443, Protocol: model.ProtocolTLS}}}
	services = append(services, headlessOnHTTPPort, headlessA, headlessB, sharedVIP1, sharedVIP2, onAdmin, onProm, ext1, ext2)
	push := routestest.Push(services, pods, nil, nil)
	ls := lds(t, listeners.NewGenerator(nil), routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil), push, nil)

	want := []string{"0.0.0.0_443", "0.0.0.0_6379", "0.0.0.0_8000", "0.0.0.0_9080", "10.0.0.10_3306", "10.0.0.50_5432", "virtualInbound", "virtualOutbound"}
	if got := names(ls); !slices.Equal(got, want) {
		t.Fatalf("listeners = %v, want %v", got, want)
	}
	if _, ok := ls["0.0.0.0_9080"].GetFilterChains()[0].GetFilters()[0].GetConfigType().(*listener.Filter_TypedConfig); !ok {
		t.Fatal("0.0.0.0_9080 has no typed filter")
	}
	httpConnectionManager(t, ls["0.0.0.0_9080"].GetFilterChains()[0]) // still the HTTP listener
	if c := tcpProxy(t, ls["0.0.0.0_6379"].GetFilterChains()[0]).GetCluster(); c != "outbound|6379||cache-a.default.svc.cluster.local" {
		t.Errorf("0.0.0.0_6379 → %q, want the first service", c)
	}
	if c := tcpProxy(t, ls["10.0.0.50_5432"].GetFilterChains()[0]).GetCluster(); c != "outbound|5432||db-1.default.svc.cluster.local" {
		t.Errorf("10.0.0.50_5432 → %q, want the first service", c)
	}

	sni := ls["0.0.0.0_443"]
	if lf := sni.GetListenerFilters(); len(lf) != 1 || lf[0].GetName() != listeners.TLSInspectorName {
		t.Errorf("SNI listener filters = %v", lf)
	}
	byName := map[string]string{}
	for _, fc := range sni.GetFilterChains() {
		sn := fc.GetFilterChainMatch().GetServerNames()
		key := "<none>"
		if len(sn) == 1 {
			key = sn[0]
		}
		byName[key] = tcpProxy(t, fc).GetCluster()
	}
	wantSNI := map[string]string{
		"*.wikipedia.org": "outbound|443||*.wikipedia.org",
		"api.example.com": "outbound|443||api.example.com",
		"<none>":          model.PassthroughCluster,
	}
	if len(byName) != len(wantSNI) {
		t.Errorf("SNI chains = %v, want %v", byName, wantSNI)
	}
	for k, v := range wantSNI {
		if byName[k] != v {
			t.Errorf("SNI chain %s → %q, want %q", k, byName[k], v)
		}
	}
}

// TPROXY interception makes the virtual listeners transparent.
func TestSidecarTransparent(t *testing.T) {
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services, pods, nil, nil)
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", map[string]any{"INTERCEPTION_MODE": "TPROXY"})
	ls := lds(t, listeners.NewGenerator(nil), proxy, push, nil)
	if !ls["virtualOutbound"].GetTransparent().GetValue() || !ls["virtualInbound"].GetTransparent().GetValue() {
		t.Error("TPROXY virtual listeners are not transparent")
	}
	plain := lds(t, listeners.NewGenerator(nil), routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil), push, nil)
	if plain["virtualOutbound"].GetTransparent() != nil {
		t.Error("REDIRECT virtualOutbound is transparent")
	}
}

// A sidecar that names listeners gets only those.
func TestSidecarNamedRequest(t *testing.T) {
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services, pods, nil, nil)
	proxy := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	ls := lds(t, listeners.NewGenerator(nil), proxy, push, &model.WatchedResource{TypeURL: model.ListenerType, Names: []string{"virtualInbound", "0.0.0.0_9080", "nope"}})
	if got := names(ls); !slices.Equal(got, []string{"0.0.0.0_9080", "virtualInbound"}) {
		t.Errorf("listeners = %v", got)
	}
}

// Cached listeners are byte-identical to freshly built ones, shared between proxies that need the same
// listener, and never shared when the content differs (another inbound port set, another TCP route).
func TestSidecarListenerCache(t *testing.T) {
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services, pods, nil, nil)
	cache := util.NewCache(1000)
	cached, fresh := listeners.NewGenerator(cache), listeners.NewGenerator(nil)
	w := &model.WatchedResource{TypeURL: model.ListenerType, Wildcard: true}
	raw := func(g *listeners.Generator, p *model.Proxy, push *model.PushContext) map[string]string {
		res, err := g.Generate(p, push, w, nil)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, r := range res {
			out[r.GetName()] = string(r.GetResource().GetValue())
		}
		return out
	}
	pp := routestest.Sidecar(t, push, "productpage-v1", "default", "10.1.0.1", nil)
	ratings := routestest.Sidecar(t, push, "ratings-v1", "default", "10.1.0.5", nil)
	mysql := routestest.Sidecar(t, push, "mysqldb-v1", "default", "10.1.0.7", nil)
	a, b := raw(cached, pp, push), raw(fresh, pp, push)
	if len(a) != len(b) {
		t.Fatalf("cached %d listeners, fresh %d", len(a), len(b))
	}
	for n := range b {
		if a[n] != b[n] {
			t.Errorf("cached listener %s differs from a fresh build", n)
		}
	}
	n := cache.Len()
	if r := raw(cached, ratings, push); r["virtualInbound"] != a["virtualInbound"] {
		t.Error("productpage and ratings (both HTTP 9080) should share virtualInbound")
	}
	if cache.Len() != n {
		t.Errorf("a proxy with identical listeners added %d cache entries", cache.Len()-n)
	}
	if m := raw(cached, mysql, push); m["virtualInbound"] == a["virtualInbound"] {
		t.Error("mysqldb (TCP 3306) got productpage's virtualInbound from the cache")
	}

	vs := routestest.Config(model.KindVirtualService, "default", "mysqldb", &networking.VirtualService{
		Hosts: []string{"mysqldb"},
		Tcp:   []*networking.TCPRoute{{Route: []*networking.RouteDestination{{Destination: &networking.Destination{Host: "mysqldb", Subset: "v2"}}}}},
	})
	push2 := routestest.Push(services, pods, []*model.Config{vs}, nil)
	pp2 := routestest.Sidecar(t, push2, "productpage-v1", "default", "10.1.0.1", nil)
	got := lds(t, cached, pp2, push2, nil)["10.0.0.10_3306"]
	if c := tcpProxy(t, got.GetFilterChains()[0]).GetCluster(); c != "outbound|3306|v2|"+mysqlFQDN {
		t.Errorf("after a VirtualService change the cache served cluster %q", c)
	}
}

// Inbound route configurations must not be confused with outbound ones: the inline config is named after
// the inbound cluster.
func TestInboundRouteConfigName(t *testing.T) {
	services, pods := routestest.Bookinfo()
	push := routestest.Push(services, pods, nil, nil)
	vi := lds(t, listeners.NewGenerator(nil), routestest.Sidecar(t, push, "reviews-v1", "default", "10.1.0.2", nil), push, nil)["virtualInbound"]
	for _, fc := range vi.GetFilterChains() {
		if fc.GetFilterChainMatch().GetDestinationPort().GetValue() == 9080 {
			if n := httpConnectionManager(t, fc).GetRouteConfig().GetName(); n != "inbound|9080||" {
				t.Errorf("inline route config name = %q", n)
			}
			return
		}
	}
	t.Error("no 9080 chain")
}
