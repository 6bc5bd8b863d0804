// Package kube runs meshd's discovery server against a real kube-apiserver, etcd and controller-manager on
// loopback (see kubetest), with Istio's published Bookinfo manifests applied as a user would.
package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	networking "istio.io/api/networking/v1alpha3"
	istionet "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/pkg/config/parse"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/xds"
	"github.com/meshd/meshd/test/kube/kubetest"
	"github.com/meshd/meshd/test/xdstest"
)

// binDir holds binaries the tests build (the agent's); TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshd-kube-bins")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := kubetest.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

const ns = "bookinfo"

var corpus = filepath.Join("..", "..", "..", "shared", "corpus", "istio-samples", "bookinfo")

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
	return newMeshdWith(t, kubeconfig, meshConfig, func(*bootstrap.Args) {})
}

func newMeshdWith(t *testing.T, kubeconfig, meshConfig string, tune func(*bootstrap.Args)) *bootstrap.Server {
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
	tune(args)

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
	applyManifest(t, cs, filepath.Join(corpus, "platform", "kube", "bookinfo.yaml"), ns)
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
	sc := xdstest.Dial(t, s.GRPCListener.String(), fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", pod.Status.PodIP, pod.Name, ns, ns),
		map[string]any{"NAMESPACE": ns})
	reviewsWeights := func() map[string]uint32 { return sc.RouteWeights("9080", "reviews."+ns+".svc.cluster.local:9080", "") }
	sc.Next(30 * time.Second)
	for _, svc := range []string{"productpage", "details", "ratings", "reviews"} {
		if sc.Have[model.ClusterType][model.BuildSubsetKey(model.Outbound, "", host(svc), 9080)] == nil {
			t.Fatalf("no cluster for %s: %v", svc, sc.Names(model.ClusterType))
		}
	}
	if sc.Have[model.ClusterType]["outbound|9080|v3|"+host("reviews")] == nil || sc.Have[model.ClusterType]["inbound|9080||"] == nil {
		t.Fatalf("subset or inbound cluster missing: %v", sc.Names(model.ClusterType))
	}
	var eds []string
	for name := range sc.Have[model.ClusterType] {
		if strings.HasPrefix(name, "outbound|") {
			eds = append(eds, name)
		}
	}
	sc.Subscribe(model.EndpointType, eds...)
	sc.Subscribe(model.ListenerType)
	sc.Subscribe(model.RouteType, "9080")
	for range 3 {
		sc.Next(30 * time.Second)
	}
	detailsCluster := model.BuildSubsetKey(model.Outbound, "", host("details"), 9080)
	eventually(t, time.Minute, "details and the three reviews endpoints", func() bool {
		sc.Drain()
		return len(sc.Endpoints(detailsCluster)) == 1 && len(sc.Endpoints(model.BuildSubsetKey(model.Outbound, "", host("reviews"), 9080))) == 3
	})
	if got := reviewsWeights(); got["outbound|9080|v1|"+host("reviews")] != 80 || got["outbound|9080|v2|"+host("reviews")] != 20 {
		t.Fatalf("reviews weights %v, want 80/20 from the VirtualService", got)
	}

	t.Run("scaling details is an EDS-only push", func(t *testing.T) {
		scaleDetails(t, cs, 2)
		for len(sc.Endpoints(detailsCluster)) != 2 {
			r := sc.Next(time.Minute)
			if r.TypeUrl != model.EndpointType {
				t.Fatalf("scaling a Deployment pushed %s %v; want EDS only", model.ShortType(r.TypeUrl), xdstest.ResourceNames(r))
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
		for reviewsWeights()["outbound|9080|v2|"+host("reviews")] != 70 {
			sc.Next(time.Minute)
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
		for len(sc.Endpoints(detailsCluster)) != 3 {
			sc.Next(2 * time.Minute)
		}
	})

	t.Run("deleting a Service removes its clusters", func(t *testing.T) {
		if err := cs.CoreV1().Services(ns).Delete(ctx, "ratings", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		for sc.Have[model.ClusterType][model.BuildSubsetKey(model.Outbound, "", host("ratings"), 9080)] != nil {
			sc.Next(time.Minute)
		}
	})
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
	testutil.Eventually(t, timeout, what, cond)
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
