package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/test/xdstest"
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

	meta := map[string]any{"NAMESPACE": "default", "ISTIO_VERSION": "1.28.0", "CLUSTER_ID": "Kubernetes"}
	e := xdstest.Dial(t, s.GRPCListener.String(), productpageID, meta)
	next := func() *discovery.DeltaDiscoveryResponse { return e.Next(15 * time.Second) }
	split := func(e *xdstest.Envoy) map[string]uint32 {
		return e.RouteWeights("9080", "reviews.default.svc.cluster.local:9080", "split")
	}
	cds := next()
	if cds.TypeUrl != model.ClusterType {
		t.Fatalf("first response %s", cds.TypeUrl)
	}
	for _, want := range []string{"outbound|9080||reviews.default.svc.cluster.local", "outbound|9080|v2|reviews.default.svc.cluster.local",
		"inbound|9080||", model.PassthroughCluster, model.BlackHoleCluster, model.InboundPassthroughCluster} {
		if !slices.Contains(e.Names(model.ClusterType), want) {
			t.Errorf("CDS lacks %s: %v", want, e.Names(model.ClusterType))
		}
	}
	var edsNames []string
	for _, name := range e.Names(model.ClusterType) {
		var c cluster.Cluster
		if err := e.Have[model.ClusterType][name].Resource.UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		if c.GetType() == cluster.Cluster_EDS {
			edsNames = append(edsNames, c.EdsClusterConfig.GetServiceName())
		}
	}
	e.Subscribe(model.EndpointType, edsNames...)
	if r := next(); r.TypeUrl != model.EndpointType || len(r.Resources) != len(edsNames) {
		t.Fatalf("EDS: %s with %d resources, want %d", r.TypeUrl, len(r.Resources), len(edsNames))
	}
	e.Subscribe(model.ListenerType)
	lds := next()
	if got := xdstest.ResourceNames(lds); !slices.Equal(got, []string{"0.0.0.0_9080", model.VirtualInboundListener, model.VirtualOutboundListener}) {
		t.Fatalf("listeners = %v", got)
	}
	var outbound listener.Listener
	if err := e.Have[model.ListenerType]["virtualOutbound"].Resource.UnmarshalTo(&outbound); err != nil || !outbound.UseOriginalDst.GetValue() {
		t.Fatalf("virtualOutbound must use the original destination (%v)", err)
	}
	e.Subscribe(model.RouteType, "9080")
	if r := next(); r.TypeUrl != model.RouteType {
		t.Fatalf("RDS: %s", r.TypeUrl)
	}
	if got := split(e); got["outbound|9080|v1|reviews.default.svc.cluster.local"] != 80 || got["outbound|9080|v2|reviews.default.svc.cluster.local"] != 20 {
		t.Fatalf("reviews split = %v, want 80/20", got)
	}

	// 1. A VirtualService edit changes route 9080 and nothing else: Delta sends just that.
	cdsPushes := metric(t, s, `pilot_xds_pushes{type="cds"}`)
	vs := filepath.Join(dir, "virtual-services.yaml")
	editFile(t, vs, "weight: 80", "weight: 50")
	editFile(t, vs, "weight: 20", "weight: 50")
	for {
		r := next()
		if r.TypeUrl != model.RouteType || !slices.Equal(xdstest.ResourceNames(r), []string{"9080"}) {
			t.Fatalf("after a VirtualService edit got %s %v, want only route 9080", model.ShortType(r.TypeUrl), xdstest.ResourceNames(r))
		}
		// Two writes may arrive as one push or two.
		if split(e)["outbound|9080|v1|reviews.default.svc.cluster.local"] == 50 &&
			split(e)["outbound|9080|v2|reviews.default.svc.cluster.local"] == 50 {
			break
		}
	}

	// 2. A pod address change is an endpoint-only push: EDS for the reviews clusters that contain it, no CDS.
	editFile(t, filepath.Join(dir, "platform.yaml"), "podIP: 10.244.0.14", "podIP: 10.244.0.24")
	r := next()
	if r.TypeUrl != model.EndpointType || !slices.Equal(xdstest.ResourceNames(r),
		[]string{"outbound|9080|v3|reviews.default.svc.cluster.local", "outbound|9080||reviews.default.svc.cluster.local"}) {
		t.Fatalf("after a pod IP change got %s %v", model.ShortType(r.TypeUrl), xdstest.ResourceNames(r))
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
	details := xdstest.Dial(t, s.GRPCListener.String(), "sidecar~10.244.0.11~details-v1.default~default.svc.cluster.local", meta)
	details.Next(15 * time.Second)
	details.Subscribe(model.RouteType, "9080")
	details.Next(15 * time.Second)
	if got := split(details); got["outbound|9080|v1|reviews.default.svc.cluster.local"] != 50 {
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
