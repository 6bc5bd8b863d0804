// Package kube runs meshd's discovery server against a real kube-apiserver, etcd and controller-manager on
// loopback (see kubetest), with Istio's published Bookinfo manifests applied as a user would.
package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	networking "istio.io/api/networking/v1alpha3"
	istionet "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/pkg/config/parse"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/xds"
	"github.com/meshd/meshd/test/kube/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }

const ns = "bookinfo"

var corpus = filepath.Join("..", "..", "..", "shared", "corpus", "istio-samples", "bookinfo")

// applyKube creates the Services, ServiceAccounts and Deployments of a Kubernetes manifest in ns.
func applyKube(t *testing.T, cs kubernetes.Interface, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
	ctx := t.Context()
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc == nil {
			continue
		}
		raw, _ := json.Marshal(doc)
		switch doc["kind"] {
		case "Service":
			var o corev1.Service
			mustDecode(t, raw, &o)
			_, err = cs.CoreV1().Services(ns).Create(ctx, &o, metav1.CreateOptions{})
		case "ServiceAccount":
			var o corev1.ServiceAccount
			mustDecode(t, raw, &o)
			_, err = cs.CoreV1().ServiceAccounts(ns).Create(ctx, &o, metav1.CreateOptions{})
		case "Deployment":
			var o appsv1.Deployment
			mustDecode(t, raw, &o)
			_, err = cs.AppsV1().Deployments(ns).Create(ctx, &o, metav1.CreateOptions{})
		default:
			continue
		}
		if err != nil {
			t.Fatalf("%s: create %v: %v", path, doc["kind"], err)
		}
	}
}

// applyIstio creates the VirtualServices and DestinationRules of an Istio manifest in ns, through meshd's own
// parser (so the spec is exactly what a user's YAML says) and the istio.io/client-go clientset.
func applyIstio(t *testing.T, ic istioclient.Interface, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs, errs := parse.Parse(b, path)
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
	for _, c := range objs.Configs {
		meta := metav1.ObjectMeta{Name: c.Name, Namespace: ns}
		switch spec := c.Spec.(type) {
		case *networking.VirtualService:
			_, err = ic.NetworkingV1().VirtualServices(ns).Create(t.Context(), &istionet.VirtualService{ObjectMeta: meta, Spec: *cloneVS(spec)}, metav1.CreateOptions{})
		case *networking.DestinationRule:
			_, err = ic.NetworkingV1().DestinationRules(ns).Create(t.Context(), &istionet.DestinationRule{ObjectMeta: meta, Spec: *cloneDR(spec)}, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatalf("%s: %s: %v", path, c, err)
		}
	}
}

func startMeshd(t *testing.T, kubeconfig string) *bootstrap.Server {
	t.Helper()
	s := newMeshd(t, kubeconfig, "")
	eventually(t, time.Minute, "meshd ready", func() bool { return ready(s) })
	return s
}

func ready(s *bootstrap.Server) bool {
	resp, err := http.Get("http://" + s.HTTPListener.String() + "/ready")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// newMeshd starts a discovery server on the cluster without waiting for it to be ready; meshConfig, when not
// empty, is the MeshConfig YAML it runs with.
func newMeshd(t *testing.T, kubeconfig, meshConfig string) *bootstrap.Server {
	t.Helper()
	args, err := bootstrap.DefaultArgs()
	if err != nil {
		t.Fatal(err)
	}
	args.GRPCAddr, args.HTTPAddr, args.MonitoringAddr, args.SecureGRPCAddr, args.HTTPSAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "", ""
	args.Kubeconfig, args.MeshConfigFile = kubeconfig, ""
	if meshConfig != "" {
		args.MeshConfigFile = filepath.Join(t.TempDir(), "mesh")
		if err := os.WriteFile(args.MeshConfigFile, []byte(meshConfig), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	args.Debounce = xds.DebounceOptions{After: 50 * time.Millisecond, Max: time.Second, EDS: true}
	args.ShutdownDuration = 2 * time.Second

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := bootstrap.NewServer(ctx, args, log)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); s.Wait() })
	return s
}

// sidecar is a Delta ADS client subscribing as Envoy does and recording every response.
type sidecar struct {
	t      *testing.T
	stream discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	resps  chan *discovery.DeltaDiscoveryResponse
	errs   chan error
	have   map[string]map[string]*discovery.Resource
}

func connect(t *testing.T, s *bootstrap.Server, nodeID string) *sidecar {
	conn, err := grpc.NewClient(s.GRPCListener.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sc := &sidecar{t: t, stream: st, resps: make(chan *discovery.DeltaDiscoveryResponse, 64), errs: make(chan error, 1),
		have: map[string]map[string]*discovery.Resource{}}
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				sc.errs <- err
				return
			}
			sc.resps <- r
		}
	}()
	md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": ns})
	sc.send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: nodeID, Metadata: md}, TypeUrl: model.ClusterType})
	return sc
}

func (sc *sidecar) send(r *discovery.DeltaDiscoveryRequest) {
	if err := sc.stream.Send(r); err != nil {
		sc.t.Fatal(err)
	}
}

func (sc *sidecar) next(timeout time.Duration) *discovery.DeltaDiscoveryResponse {
	sc.t.Helper()
	select {
	case r := <-sc.resps:
		m := sc.have[r.TypeUrl]
		if m == nil {
			m = map[string]*discovery.Resource{}
			sc.have[r.TypeUrl] = m
		}
		for _, res := range r.Resources {
			m[res.Name] = res
		}
		for _, n := range r.RemovedResources {
			delete(m, n)
		}
		sc.send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
		return r
	case err := <-sc.errs:
		sc.t.Fatalf("ADS stream ended: %v", err)
	case <-time.After(timeout):
		sc.t.Fatalf("no ADS response within %v", timeout)
	}
	return nil
}

func (sc *sidecar) endpoints(cluster string) []string {
	var cla endpoint.ClusterLoadAssignment
	r := sc.have[model.EndpointType][cluster]
	if r == nil {
		return nil
	}
	if err := r.Resource.UnmarshalTo(&cla); err != nil {
		sc.t.Fatal(err)
	}
	var out []string
	for _, l := range cla.Endpoints {
		for _, e := range l.LbEndpoints {
			out = append(out, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
		}
	}
	slices.Sort(out)
	return out
}

func (sc *sidecar) reviewsWeights() map[string]uint32 {
	var rc route.RouteConfiguration
	if err := sc.have[model.RouteType]["9080"].Resource.UnmarshalTo(&rc); err != nil {
		sc.t.Fatal(err)
	}
	out := map[string]uint32{}
	for _, vh := range rc.VirtualHosts {
		if vh.Name == "reviews."+ns+".svc.cluster.local:9080" {
			for _, r := range vh.Routes {
				for _, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
					out[wc.Name] = wc.Weight.GetValue()
				}
				if c := r.GetRoute().GetCluster(); c != "" {
					out[c] = 100
				}
			}
		}
	}
	return out
}

func host(svc string) string { return svc + "." + ns + ".svc.cluster.local" }

// TestBookinfoOnARealCluster: a day of a Bookinfo mesh on a real API server, seen by the productpage sidecar.
func TestBookinfoOnARealCluster(t *testing.T) {
	c := kubetest.Shared(t)
	cs := c.Clientset
	c.InstallIstioCRDs(t)
	c.StartFakeKubelet(t, kubetest.Node{})
	ic, err := istioclient.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	createNamespace(t, cs, ns, nil)
	createNamespace(t, cs, "istio-system", nil)
	applyKube(t, cs, filepath.Join(corpus, "platform", "kube", "bookinfo.yaml"))
	applyIstio(t, ic, filepath.Join(corpus, "networking", "destination-rule-all.yaml"))
	applyIstio(t, ic, filepath.Join(corpus, "networking", "virtual-service-reviews-80-20.yaml"))

	// The productpage pod, made Running by the fake kubelet, is the proxy.
	var pod corev1.Pod
	eventually(t, 2*time.Minute, "productpage pod running with an IP", func() bool {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=productpage"})
		if err != nil || len(pods.Items) == 0 || pods.Items[0].Status.PodIP == "" {
			return false
		}
		pod = pods.Items[0]
		return true
	})
	s := startMeshd(t, c.Kubeconfig)
	sc := connect(t, s, fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", pod.Status.PodIP, pod.Name, ns, ns))
	sc.next(30 * time.Second)
	for _, svc := range []string{"productpage", "details", "ratings", "reviews"} {
		if sc.have[model.ClusterType][model.BuildSubsetKey(model.Outbound, "", host(svc), 9080)] == nil {
			t.Fatalf("no cluster for %s: %v", svc, model.SortedKeys(sc.have[model.ClusterType]))
		}
	}
	if sc.have[model.ClusterType]["outbound|9080|v3|"+host("reviews")] == nil || sc.have[model.ClusterType]["inbound|9080||"] == nil {
		t.Fatalf("subset or inbound cluster missing: %v", model.SortedKeys(sc.have[model.ClusterType]))
	}
	var eds []string
	for name := range sc.have[model.ClusterType] {
		if strings.HasPrefix(name, "outbound|") {
			eds = append(eds, name)
		}
	}
	sc.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.EndpointType, ResourceNamesSubscribe: eds})
	sc.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.ListenerType})
	sc.send(&discovery.DeltaDiscoveryRequest{TypeUrl: model.RouteType, ResourceNamesSubscribe: []string{"9080"}})
	for _, typ := range []string{model.EndpointType, model.ListenerType, model.RouteType} {
		_ = typ
		sc.next(30 * time.Second)
	}
	detailsCluster := model.BuildSubsetKey(model.Outbound, "", host("details"), 9080)
	eventually(t, time.Minute, "details and the three reviews endpoints", func() bool {
		for len(sc.resps) > 0 {
			sc.next(time.Second)
		}
		return len(sc.endpoints(detailsCluster)) == 1 && len(sc.endpoints(model.BuildSubsetKey(model.Outbound, "", host("reviews"), 9080))) == 3
	})
	if got := sc.reviewsWeights(); got["outbound|9080|v1|"+host("reviews")] != 80 || got["outbound|9080|v2|"+host("reviews")] != 20 {
		t.Fatalf("reviews weights %v, want 80/20 from the VirtualService", got)
	}

	t.Run("scaling details is an EDS-only push", func(t *testing.T) {
		scaleDetails(t, cs, 2)
		for len(sc.endpoints(detailsCluster)) != 2 {
			r := sc.next(time.Minute)
			if r.TypeUrl != model.EndpointType {
				t.Fatalf("scaling a Deployment pushed %s %v; want EDS only", model.ShortType(r.TypeUrl), names(r))
			}
		}
	})

	t.Run("VirtualService weights change routes", func(t *testing.T) {
		vs, err := ic.NetworkingV1().VirtualServices(ns).Get(ctx, "reviews", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		vs.Spec.Http[0].Route[0].Weight, vs.Spec.Http[0].Route[1].Weight = 30, 70
		if _, err := ic.NetworkingV1().VirtualServices(ns).Update(ctx, vs, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for sc.reviewsWeights()["outbound|9080|v2|"+host("reviews")] != 70 {
			sc.next(time.Minute)
		}
	})

	t.Run("an invalid VirtualService is rejected and the rest keeps serving", func(t *testing.T) {
		before := metric(t, s, `pilot_total_rejected_configs{type="VirtualService"}`)
		bad := &istionet.VirtualService{ObjectMeta: metav1.ObjectMeta{Name: "bad-regex", Namespace: ns},
			Spec: networking.VirtualService{Hosts: []string{"ratings"}, Http: []*networking.HTTPRoute{{
				Match: []*networking.HTTPMatchRequest{{Uri: &networking.StringMatch{MatchType: &networking.StringMatch_Regex{Regex: "(("}}}},
				Route: []*networking.HTTPRouteDestination{{Destination: &networking.Destination{Host: "ratings"}}}}}}}
		if _, err := ic.NetworkingV1().VirtualServices(ns).Create(ctx, bad, metav1.CreateOptions{}); err != nil {
			t.Fatalf("the API server refused the object (its schema is looser than meshd's validation): %v", err)
		}
		eventually(t, time.Minute, "the rejection metric", func() bool {
			return metric(t, s, `pilot_total_rejected_configs{type="VirtualService"}`) != before
		})
	})

	t.Run("kube-apiserver restart loses nothing", func(t *testing.T) {
		c.RestartAPIServer(t)
		scaleDetails(t, cs, 3)
		for len(sc.endpoints(detailsCluster)) != 3 {
			sc.next(2 * time.Minute)
		}
	})

	t.Run("deleting a Service removes its clusters", func(t *testing.T) {
		if err := cs.CoreV1().Services(ns).Delete(ctx, "ratings", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		for sc.have[model.ClusterType][model.BuildSubsetKey(model.Outbound, "", host("ratings"), 9080)] != nil {
			sc.next(time.Minute)
		}
	})
}

func names(r *discovery.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.Resources {
		out = append(out, res.Name)
	}
	return append(out, r.RemovedResources...)
}

func scaleDetails(t *testing.T, cs kubernetes.Interface, n int32) {
	t.Helper()
	eventually(t, time.Minute, "scale details", func() bool {
		s, err := cs.AppsV1().Deployments(ns).GetScale(t.Context(), "details-v1", metav1.GetOptions{})
		if err != nil {
			return false
		}
		s.Spec.Replicas = n
		_, err = cs.AppsV1().Deployments(ns).UpdateScale(t.Context(), "details-v1", s, metav1.UpdateOptions{})
		return err == nil
	})
}

func metric(t *testing.T, s *bootstrap.Server, series string) string {
	resp, err := http.Get("http://" + s.MonListener.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := strings.CutPrefix(string(line), series+" "); ok {
			return v
		}
	}
	return ""
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func createNamespace(t *testing.T, cs kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// TestReplicasReadinessAndSelectors: a replica started while the API server is down stays unready and refuses
// ADS streams (so proxies keep their config and retry), then serves once it has synced; two replicas both
// serve, exactly one leads; discovery selectors keep unselected namespaces out of a replica's registry.
func TestReplicasReadinessAndSelectors(t *testing.T) {
	c := kubetest.Shared(t)
	cs := c.Clientset
	c.InstallIstioCRDs(t)
	createNamespace(t, cs, "istio-system", nil)
	createNamespace(t, cs, "shop", nil)
	ctx := t.Context()
	if _, err := cs.CoreV1().Services("shop").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	c.StopAPIServer(t)
	t.Setenv("POD_NAME", "replica-a")
	a := newMeshd(t, c.Kubeconfig, "discoverySelectors:\n- matchLabels:\n    meshd-discovery: enabled\n")
	if ready(a) {
		t.Fatal("/ready is 200 while the API server is down")
	}
	conn, err := grpc.NewClient(a.GRPCListener.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "sidecar~10.0.0.1~x.shop~shop.svc.cluster.local"}, TypeUrl: model.ClusterType})
	if _, err := st.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("ADS before sync: %v, want Unavailable", err)
	}
	c.StartAPIServer(t)
	eventually(t, 2*time.Minute, "replica a ready after the API server is back", func() bool { return ready(a) })

	t.Setenv("POD_NAME", "replica-b")
	b := startMeshd(t, c.Kubeconfig)
	eventually(t, time.Minute, "a leader", func() bool { return a.IsLeader() || b.IsLeader() })
	if a.IsLeader() && b.IsLeader() {
		t.Fatal("both replicas lead")
	}

	registry := func(s *bootstrap.Server) string {
		resp, err := http.Get("http://" + s.HTTPListener.String() + "/debug/registryz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}
	const web = `"hostname": "web.shop.svc.cluster.local"`
	eventually(t, time.Minute, "replica b (no selectors) to see shop", func() bool { return strings.Contains(registry(b), web) })
	if strings.Contains(registry(a), web) {
		t.Fatal("replica a has a service of a namespace its discovery selectors do not select")
	}
	ns, err := cs.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels = map[string]string{"meshd-discovery": "enabled"}
	if _, err := cs.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Minute, "replica a to see shop once it is selected", func() bool { return strings.Contains(registry(a), web) })
}
