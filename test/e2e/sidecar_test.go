package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/pkg/model"
)

// copySample copies samples/bookinfo into a temporary directory the test may edit.
func copySample(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir("../../samples/bookinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("../../samples/bookinfo", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, e.Name()), string(b))
	}
	return dir
}

func editFile(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s does not contain %q", path, old)
	}
	writeFile(t, path, strings.Replace(string(b), old, new, 1))
}

// envoy is a Delta ADS client that subscribes the way Envoy does: wildcard CDS and LDS, then EDS and RDS by the
// names they reference, ACKing every response.
type envoy struct {
	t      *testing.T
	stream discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	resps  chan *discovery.DeltaDiscoveryResponse
	errs   chan error
	// have holds the resources this client holds, by type and name.
	have map[string]map[string]*discovery.Resource
}

func dialEnvoy(t *testing.T, s *bootstrap.Server, nodeID string) *envoy {
	t.Helper()
	conn, err := grpc.NewClient(s.GRPCListener.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := &envoy{t: t, stream: st, resps: make(chan *discovery.DeltaDiscoveryResponse, 64), errs: make(chan error, 1),
		have: map[string]map[string]*discovery.Resource{}}
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
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": "default", "ISTIO_VERSION": "1.28.0", "CLUSTER_ID": "Kubernetes"})
	e.send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: nodeID, Metadata: md}, TypeUrl: model.ClusterType})
	return e
}

func (e *envoy) send(r *discovery.DeltaDiscoveryRequest) {
	e.t.Helper()
	if err := e.stream.Send(r); err != nil {
		e.t.Fatal(err)
	}
}

// next returns the next response, applied to the client's state and ACKed.
func (e *envoy) next() *discovery.DeltaDiscoveryResponse {
	e.t.Helper()
	select {
	case r := <-e.resps:
		m := e.have[r.TypeUrl]
		if m == nil {
			m = map[string]*discovery.Resource{}
			e.have[r.TypeUrl] = m
		}
		for _, res := range r.Resources {
			m[res.Name] = res
		}
		for _, n := range r.RemovedResources {
			delete(m, n)
		}
		e.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
		return r
	case err := <-e.errs:
		e.t.Fatalf("stream ended: %v", err)
	case <-time.After(15 * time.Second):
		e.t.Fatal("no response within 15s")
	}
	return nil
}

func (e *envoy) names(typeURL string) []string { return model.SortedKeys(e.have[typeURL]) }

func resourceNames(rs []*discovery.Resource) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	slices.Sort(out)
	return out
}

// weights returns the weighted clusters of the named route in the reviews vhost of route config 9080.
func (e *envoy) reviewsSplit(routeName string) map[string]uint32 {
	e.t.Helper()
	var rc route.RouteConfiguration
	if err := e.have[model.RouteType]["9080"].Resource.UnmarshalTo(&rc); err != nil {
		e.t.Fatal(err)
	}
	for _, vh := range rc.VirtualHosts {
		if vh.Name != "reviews.default.svc.cluster.local:9080" {
			continue
		}
		for _, r := range vh.Routes {
			if r.Name == routeName {
				out := map[string]uint32{}
				for _, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
					out[wc.Name] = wc.Weight.GetValue()
				}
				return out
			}
		}
	}
	e.t.Fatalf("route %s not found in the reviews vhost", routeName)
	return nil
}

func metric(t *testing.T, s *bootstrap.Server, series string) string {
	t.Helper()
	_, body := httpGet(t, "http://"+s.MonListener.String()+"/metrics")
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.TrimPrefix(line, series+" ")
		}
	}
	return ""
}

const productpageID = "sidecar~10.244.0.10~productpage-v1.default~default.svc.cluster.local"

// TestSidecarOverDelta follows the productpage sidecar of the Bookinfo sample through a day of operations:
// initial config, a VirtualService edit, an endpoint change, bad input, and the operator's debug endpoints.
func TestSidecarOverDelta(t *testing.T) {
	dir := copySample(t)
	s := startMeshd(t, dir)
	if code, _ := httpGet(t, "http://"+s.HTTPListener.String()+"/ready"); code != 200 {
		t.Fatalf("/ready = %d", code)
	}

	e := dialEnvoy(t, s, productpageID)
	cds := e.next()
	if cds.TypeUrl != model.ClusterType {
		t.Fatalf("first response %s", cds.TypeUrl)
	}
	for _, want := range []string{"outbound|9080||reviews.default.svc.cluster.local", "outbound|9080|v2|reviews.default.svc.cluster.local",
		"inbound|9080||", model.PassthroughCluster, model.BlackHoleCluster, model.InboundPassthroughCluster} {
		if !slices.Contains(e.names(model.ClusterType), want) {
			t.Errorf("CDS lacks %s: %v", want, e.names(model.ClusterType))
		}
	}
	var edsNames []string
	for _, name := range e.names(model.ClusterType) {
		var c cluster.Cluster
		if err := e.have[model.ClusterType][name].Resource.UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		if c.GetType() == cluster.Cluster_EDS {
			edsNames = append(edsNames, c.EdsClusterConfig.GetServiceName())
		}
	}
	e.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.EndpointType, ResourceNamesSubscribe: edsNames})
	if r := e.next(); r.TypeUrl != model.EndpointType || len(r.Resources) != len(edsNames) {
		t.Fatalf("EDS: %s with %d resources, want %d", r.TypeUrl, len(r.Resources), len(edsNames))
	}
	e.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.ListenerType})
	lds := e.next()
	if got := resourceNames(lds.Resources); !slices.Equal(got, []string{"0.0.0.0_9080", model.VirtualInboundListener, model.VirtualOutboundListener}) {
		t.Fatalf("listeners = %v", got)
	}
	var outbound listener.Listener
	if err := e.have[model.ListenerType]["virtualOutbound"].Resource.UnmarshalTo(&outbound); err != nil || !outbound.UseOriginalDst.GetValue() {
		t.Fatalf("virtualOutbound must use the original destination (%v)", err)
	}
	e.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.RouteType, ResourceNamesSubscribe: []string{"9080"}})
	if r := e.next(); r.TypeUrl != model.RouteType {
		t.Fatalf("RDS: %s", r.TypeUrl)
	}
	if got := e.reviewsSplit("split"); got["outbound|9080|v1|reviews.default.svc.cluster.local"] != 80 || got["outbound|9080|v2|reviews.default.svc.cluster.local"] != 20 {
		t.Fatalf("reviews split = %v, want 80/20", got)
	}

	// 1. A VirtualService edit changes route 9080 and nothing else: Delta sends just that.
	cdsPushes := metric(t, s, `pilot_xds_pushes{type="cds"}`)
	vs := filepath.Join(dir, "virtual-services.yaml")
	editFile(t, vs, "weight: 80", "weight: 50")
	editFile(t, vs, "weight: 20", "weight: 50")
	for {
		r := e.next()
		if r.TypeUrl != model.RouteType || !slices.Equal(resourceNames(r.Resources), []string{"9080"}) {
			t.Fatalf("after a VirtualService edit got %s %v, want only route 9080", model.ShortType(r.TypeUrl), resourceNames(r.Resources))
		}
		// Two writes may arrive as one push or two.
		if e.reviewsSplit("split")["outbound|9080|v1|reviews.default.svc.cluster.local"] == 50 &&
			e.reviewsSplit("split")["outbound|9080|v2|reviews.default.svc.cluster.local"] == 50 {
			break
		}
	}

	// 2. A pod address change is an endpoint-only push: EDS for the reviews clusters that contain it, no CDS.
	editFile(t, filepath.Join(dir, "platform.yaml"), "podIP: 10.244.0.14", "podIP: 10.244.0.24")
	r := e.next()
	if r.TypeUrl != model.EndpointType || !slices.Equal(resourceNames(r.Resources),
		[]string{"outbound|9080|v3|reviews.default.svc.cluster.local", "outbound|9080||reviews.default.svc.cluster.local"}) {
		t.Fatalf("after a pod IP change got %s %v", model.ShortType(r.TypeUrl), resourceNames(r.Resources))
	}
	if got := metric(t, s, `pilot_xds_pushes{type="cds"}`); got != cdsPushes {
		t.Fatalf("CDS pushes went from %s to %s on config and endpoint changes that did not change clusters", cdsPushes, got)
	}

	// 3. Bad input: a malformed file and an invalid VirtualService are rejected, counted, and the last good
	// config keeps being served to existing and new proxies.
	rejected := metric(t, s, `pilot_total_rejected_configs{type="VirtualService"}`)
	editFile(t, vs, "weight: 50\n", "weight: -5\n")
	eventually(t, 10*time.Second, "the invalid VirtualService to be counted", func() bool {
		return metric(t, s, `pilot_total_rejected_configs{type="VirtualService"}`) != rejected
	})
	writeFile(t, filepath.Join(dir, "broken.yaml"), "apiVersion: networking.istio.io/v1\nkind: VirtualService\n  metadata: [\n")
	details := dialEnvoy(t, s, "sidecar~10.244.0.11~details-v1.default~default.svc.cluster.local")
	details.next()
	details.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.RouteType, ResourceNamesSubscribe: []string{"9080"}})
	details.next()
	if got := details.reviewsSplit("split"); got["outbound|9080|v1|reviews.default.svc.cluster.local"] != 50 {
		t.Fatalf("a new proxy after bad input got reviews split %v, want the last good 50/50", got)
	}

	// 4. What operators curl.
	base := "http://" + s.HTTPListener.String()
	_, syncz := httpGet(t, base+"/debug/syncz?proxyID=productpage-v1.default")
	for _, want := range []string{`"proxy": "productpage-v1.default"`, `"cds": "SYNCED"`, `"eds": "SYNCED"`, `"lds": "SYNCED"`, `"rds": "SYNCED"`} {
		if !strings.Contains(syncz, want) {
			t.Errorf("syncz lacks %s:\n%s", want, syncz)
		}
	}
	if strings.Contains(syncz, "details-v1") {
		t.Error("syncz?proxyID= did not filter")
	}
	_, adsz := httpGet(t, base+"/debug/adsz")
	for _, want := range []string{`"totalClients": 2`, `"workload": "productpage-v1.default"`, `"delta": true`} {
		if !strings.Contains(adsz, want) {
			t.Errorf("adsz lacks %s:\n%s", want, adsz)
		}
	}
	_, cdsz := httpGet(t, base+"/debug/cdsz?proxyID=productpage-v1.default")
	if !strings.Contains(cdsz, `"name": "outbound|9080|v2|reviews.default.svc.cluster.local"`) {
		t.Errorf("cdsz lacks the v2 subset cluster:\n%.2000s", cdsz)
	}
	_, edsz := httpGet(t, base+"/debug/edsz?proxyID=productpage-v1.default")
	if !strings.Contains(edsz, `"address": "10.244.0.24"`) {
		t.Errorf("edsz lacks the moved endpoint:\n%.2000s", edsz)
	}
	code, dump := httpGet(t, base+"/debug/config_dump?proxyID=productpage-v1.default")
	if code != 200 || !strings.Contains(dump, `"name": "virtualInbound"`) || !strings.Contains(dump, `"name": "9080"`) {
		t.Errorf("config_dump = %d:\n%.1000s", code, dump)
	}
	if code, _ := httpGet(t, base+"/debug/config_dump?proxyID=nobody.nowhere"); code != 404 {
		t.Errorf("config_dump for an unknown proxy = %d, want 404", code)
	}
	for _, series := range []string{`pilot_xds{version="1.28.0"}`, "pilot_services", `pilot_push_triggers{type="config"}`,
		`pilot_total_xds_rejects{type="rds"}`, "pilot_proxy_convergence_time_count"} {
		if metric(t, s, series) == "" {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if got := metric(t, s, `pilot_xds{version="1.28.0"}`); got != "2" {
		t.Errorf("pilot_xds = %s, want 2 connected proxies", got)
	}
	if got := metric(t, s, "pilot_services"); got != "4" {
		t.Errorf("pilot_services = %s, want 4", got)
	}
}
