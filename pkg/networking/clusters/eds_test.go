package clusters

import (
	"slices"
	"strconv"
	"testing"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// lbView flattens an assignment for comparison: locality (weight): endpoints.
type lbView struct {
	locality string
	weight   uint32
	eps      []string // "addr:port health weight tlsMode"
}

func viewOf(a *endpoint.ClusterLoadAssignment) []lbView {
	var out []lbView
	for _, l := range a.GetEndpoints() {
		v := lbView{
			locality: l.GetLocality().GetRegion() + "/" + l.GetLocality().GetZone() + "/" + l.GetLocality().GetSubZone(),
			weight:   l.GetLoadBalancingWeight().GetValue(),
		}
		for _, e := range l.LbEndpoints {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			tls := e.GetMetadata().GetFilterMetadata()[transportSocketMatchKey].GetFields()[tlsModeKey].GetStringValue()
			v.eps = append(v.eps, sa.GetAddress()+":"+strconv.Itoa(int(sa.GetPortValue()))+" "+e.HealthStatus.String()+" "+
				strconv.Itoa(int(e.GetLoadBalancingWeight().GetValue()))+" "+tls)
		}
		out = append(out, v)
	}
	return out
}

func equalViews(a, b []lbView) bool {
	return slices.EqualFunc(a, b, func(x, y lbView) bool {
		return x.locality == y.locality && x.weight == y.weight && slices.Equal(x.eps, y.eps)
	})
}

func TestEDSSubsetsLocalitiesAndMetadata(t *testing.T) {
	push := bookinfo().push()
	p := sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1")
	v2, v3, all := "outbound|9080|v2|"+reviewsHost, "outbound|9080|v3|"+reviewsHost, "outbound|9080||"+reviewsHost
	as := decodeAssignments(t, generate(t, NewEDS(nil), p, push, all, v2, v3))
	if len(as) != 3 {
		t.Fatalf("assignments = %v", as)
	}

	// v2: only its two endpoints, one locality weighted 3+1 (weight 0 counts as 1), sorted by address,
	// tlsMode metadata only on the endpoint that runs a sidecar.
	want := []lbView{{"us-east/b/", 4, []string{
		"10.0.3.12:9080 HEALTHY 1 ",
		"10.0.3.2:9080 HEALTHY 3 istio",
	}}}
	if got := viewOf(as[v2]); !equalViews(got, want) {
		t.Errorf("v2:\n got %+v\nwant %+v", got, want)
	}
	want = []lbView{{"us-west/a/rack1", 3, []string{
		"10.0.3.3:9080 HEALTHY 1 istio",
		"10.0.3.4:9080 UNHEALTHY 1 istio",
		"10.0.3.5:9080 DRAINING 1 istio",
	}}}
	if got := viewOf(as[v3]); !equalViews(got, want) {
		t.Errorf("v3:\n got %+v\nwant %+v", got, want)
	}
	var locs []string
	for _, l := range viewOf(as[all]) {
		locs = append(locs, l.locality)
	}
	if want := []string{"us-east/a/", "us-east/b/", "us-west/a/rack1"}; !slices.Equal(locs, want) {
		t.Errorf("default cluster localities = %v, want %v", locs, want)
	}

	md := as[v2].Endpoints[0].LbEndpoints[1].GetMetadata()
	if got := istioField(t, md, "workload").GetStringValue(); got != "reviews-v2-1;default;reviews;v2;Kubernetes" {
		t.Errorf("workload metadata = %q", got)
	}
}

func TestWorkloadMetadataCanonicalNames(t *testing.T) {
	cases := []struct {
		labels map[string]string
		want   string
	}{
		{labels("app", "reviews", "version", "v2"), "pod;ns;reviews;v2;c1"},
		{labels("service.istio.io/canonical-name", "canon", "app", "reviews", "service.istio.io/canonical-revision", "r7", "version", "v2"), "pod;ns;canon;r7;c1"},
		{labels("app.kubernetes.io/name", "k8s", "app.kubernetes.io/version", "1.2"), "pod;ns;k8s;1.2;c1"},
		{nil, "pod;ns;pod;;c1"}, // workload name, and "latest" left out
	}
	for _, tc := range cases {
		e := &model.Endpoint{WorkloadName: "pod", Namespace: "ns", Labels: tc.labels}
		if got := workloadMetadata(e, "c1"); got != tc.want {
			t.Errorf("labels %v: %q, want %q", tc.labels, got, tc.want)
		}
	}
}

func TestEDSNameHandling(t *testing.T) {
	push := bookinfo().push()
	p := sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1")
	unknownSvc := "outbound|9080||nope.default.svc.cluster.local"
	unknownSubset := "outbound|9080|v9|" + reviewsHost
	unknownPort := "outbound|9999||" + reviewsHost
	rs := generate(t, NewEDS(nil), p, push,
		"inbound|9080||", "garbage", "outbound|abc||"+reviewsHost, "outbound|9080|v1", "outbound|09080||"+reviewsHost,
		"outbound|+9080||"+reviewsHost, "outbound|0||"+reviewsHost, unknownSvc, unknownSubset, unknownPort)
	want := []string{unknownSubset, unknownPort, unknownSvc}
	slices.Sort(want)
	if got := names(rs); !slices.Equal(got, want) {
		t.Fatalf("names = %v, want %v (inbound, malformed and non-canonical skipped)", got, want)
	}
	for name, a := range decodeAssignments(t, rs) {
		if len(a.Endpoints) != 0 {
			t.Errorf("%s: %d localities, want an empty assignment", name, len(a.Endpoints))
		}
	}
	if rs := generate(t, NewEDS(nil), p, push); len(rs) != 0 {
		t.Errorf("no watched names gave %v", names(rs))
	}
}

func TestEDSSubsetUsesTheProxysDestinationRule(t *testing.T) {
	// A rule in the client's namespace redefines v2 as version=v3 for its clients only.
	f := bookinfo()
	client := f.addService("client", "team", "10.96.6.1", port("http", 80))
	f.addPod(client, "client-1", "10.6.0.1", labels("app", "client"))
	f.addConfig(model.KindDestinationRule, "team", "reviews-override", &networking.DestinationRule{
		Host:    reviewsHost,
		Subsets: []*networking.Subset{{Name: "v2", Labels: labels("version", "v3")}},
	})
	push := f.push()
	v2 := "outbound|9080|v2|" + reviewsHost
	eds := NewEDS(util.NewCache(100)) // shared: the rule's identity must keep the two apart
	team := decodeAssignments(t, generate(t, eds, sidecar(t, push, "client-1", "team", "10.6.0.1"), push, v2))[v2]
	def := decodeAssignments(t, generate(t, eds, sidecar(t, push, "productpage-v1-1", "default", "10.0.0.1"), push, v2))[v2]
	if got := viewOf(team); len(got) != 1 || got[0].locality != "us-west/a/rack1" {
		t.Errorf("team's v2 = %+v, want the v3 endpoints its rule selects", got)
	}
	if got := viewOf(def); len(got) != 1 || got[0].locality != "us-east/b/" {
		t.Errorf("default's v2 = %+v, want the v2 endpoints", got)
	}
}

func TestSingleHostAssignmentIsValid(t *testing.T) {
	a := singleHostAssignment("outbound|80||x", "x.example.com", 80)
	validateDeep(t, "single host", a)
	// UNKNOWN: a DNS name has no health of its own to report (Envoy treats it as healthy).
	if got := viewOf(a); len(got) != 1 || got[0].weight != 1 || got[0].eps[0] != "x.example.com:80 UNKNOWN 1 " {
		t.Errorf("single host = %+v", got)
	}
}
