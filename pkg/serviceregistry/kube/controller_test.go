package kube

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	meshconfig "istio.io/api/mesh/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/serviceregistry/kube/nsfilter"
)

// --- fixtures ---

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func node(name string, labels map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func service(ns, name string, port int32, selector map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.10",
			Selector:  selector,
			Ports:     []corev1.ServicePort{{Name: "http", Port: port, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
}

func pod(ns, name, ip, nodeName string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: nodeName, ServiceAccountName: name + "-sa",
			Containers: []corev1.Container{{Name: "app"}, {Name: ProxyContainerName}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
}

type sliceEP struct {
	ip                          string
	ready, serving, terminating bool
	zone                        string
}

func slice(ns, name, svc string, eps ...sliceEP) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
	}
	for _, e := range eps {
		ep := discoveryv1.Endpoint{
			Addresses:  []string{e.ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(e.ready), Serving: ptr(e.serving), Terminating: ptr(e.terminating)},
		}
		if e.zone != "" {
			ep.Zone = ptr(e.zone)
		}
		sl.Endpoints = append(sl.Endpoints, ep)
	}
	return sl
}

func ready(ip string) sliceEP { return sliceEP{ip: ip, ready: true, serving: true} }

// --- harness ---

type recorder = testutil.Recorder

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, what, cond)
}

type harness struct {
	t      *testing.T
	client *fake.Clientset
	c      *Controller
	pushes *recorder
	ctx    context.Context
}

func newHarness(t *testing.T, selectors []*meshconfig.LabelSelector, objs ...runtime.Object) *harness {
	t.Helper()
	client := fake.NewClientset(objs...)
	return startHarness(t, client, selectors)
}

func startHarness(t *testing.T, client *fake.Clientset, selectors []*meshconfig.LabelSelector) *harness {
	t.Helper()
	filter, err := nsfilter.New(client, selectors, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, client: client, pushes: &recorder{}}
	h.c, err = NewController(client, Options{Filter: filter, OnChange: h.pushes.Record})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.ctx = ctx
	if err := h.c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.c.Done():
		case <-time.After(10 * time.Second):
			t.Error("controller did not stop")
		}
	})
	return h
}

func (h *harness) synced() {
	h.t.Helper()
	waitFor(h.t, "the registry to sync", h.c.HasSynced)
}

// change runs an API change and returns the push(es) it caused, merged.
func (h *harness) change(what string, f func(ctx context.Context) error) *model.PushRequest {
	h.t.Helper()
	n := h.pushes.Count()
	if err := f(h.ctx); err != nil {
		h.t.Fatalf("%s: %v", what, err)
	}
	return h.pushes.WaitMerged(h.t, n)
}

func keys(req *model.PushRequest) []string {
	var out []string
	for k := range req.ConfigsUpdated {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}

func endpointsOf(c *Controller, host string) map[string]*model.Endpoint {
	out := map[string]*model.Endpoint{}
	for _, e := range c.Endpoints(host) {
		out[fmt.Sprintf("%s:%d", e.Address, e.Port)] = e
	}
	return out
}

const reviewsHost = "reviews.shop.svc.cluster.local"

func shopObjects() []runtime.Object {
	return []runtime.Object{
		namespace("shop", nil),
		node("node-a", map[string]string{LabelRegion: "eu-west", LabelZone: "eu-west-1a", LabelSubzone: "rack7"}),
		node("node-b", nil),
		service("shop", "reviews", 9080, map[string]string{"app": "reviews"}),
		service("shop", "ratings", 9080, map[string]string{"app": "ratings"}),
		pod("shop", "reviews-1", "10.0.0.1", "node-a", map[string]string{"app": "reviews"}),
		pod("shop", "reviews-2", "10.0.0.2", "node-b", map[string]string{"app": "reviews"}),
		pod("shop", "ratings-1", "10.0.1.1", "node-b", map[string]string{"app": "ratings"}),
		slice("shop", "reviews-abc", "reviews",
			ready("10.0.0.1"),
			sliceEP{ip: "10.0.0.2"}, // not ready, not serving
			sliceEP{ip: "10.0.0.3", serving: true, terminating: true, zone: "eu-west-1c"}, // no pod known
		),
		slice("shop", "ratings-abc", "ratings", ready("10.0.1.1")),
	}
}

// --- tests ---

func TestControllerConvertsServicesEndpointsAndPods(t *testing.T) {
	h := newHarness(t, nil, shopObjects()...)
	h.synced()
	// The first publication is reported as one full push.
	first := h.pushes.WaitMerged(t, 0)
	if !first.Full || len(first.ConfigsUpdated) != 0 || first.Reason[model.ReasonGlobalUpdate] != 1 {
		t.Errorf("first push %+v, want one full global push", first)
	}

	var hosts []string
	for _, s := range h.c.Services() {
		hosts = append(hosts, s.Hostname)
	}
	if want := []string{"ratings.shop.svc.cluster.local", reviewsHost}; !slices.Equal(hosts, want) {
		t.Fatalf("services %v, want %v", hosts, want)
	}
	eps := endpointsOf(h.c, reviewsHost)
	if len(eps) != 3 {
		t.Fatalf("endpoints %v, want 3", eps)
	}
	e1, e2, e3 := eps["10.0.0.1:8080"], eps["10.0.0.2:8080"], eps["10.0.0.3:8080"]
	if e1 == nil || e2 == nil || e3 == nil {
		t.Fatalf("endpoints %v", eps)
	}
	// Ready, with the pod's labels and service account, the node's locality and the sidecar's TLS mode.
	if e1.Health != model.Healthy || e1.Locality != "eu-west/eu-west-1a/rack7" || e1.ServiceAccount != "reviews-1-sa" ||
		e1.Labels["app"] != "reviews" || e1.TLSMode != model.TLSModeIstio || e1.WorkloadName != "reviews-1" || e1.ServicePort != 9080 {
		t.Errorf("ready endpoint %+v", e1)
	}
	// Not ready: unhealthy. Its node has no topology labels, so no locality.
	if e2.Health != model.Unhealthy || e2.Locality != "" {
		t.Errorf("not ready endpoint %+v", e2)
	}
	// Serving and terminating: draining. No pod known: the slice's zone, TLS disabled.
	if e3.Health != model.Draining || e3.Locality != Locality("", "eu-west-1c", "") || e3.TLSMode != model.TLSModeDisabled {
		t.Errorf("terminating endpoint %+v", e3)
	}

	byIP, byName := map[string]*model.Workload{}, map[string]*model.Workload{}
	for _, w := range h.c.Workloads() {
		byIP[w.IP], byName[w.Key()] = w, w
	}
	if w := byIP["10.0.0.1"]; w == nil || w.Key() != "reviews-1.shop" || w.Locality != "eu-west/eu-west-1a/rack7" || !w.Ready {
		t.Errorf("workload by IP: %+v", w)
	}
	if w := byName["ratings-1.shop"]; w == nil || w.IP != "10.0.1.1" {
		t.Errorf("workload by name: %+v", w)
	}

	// The snapshot is one consistent view.
	d, store := h.c.Snapshot()
	if len(d.Services()) != 2 || len(d.Endpoints(reviewsHost)) != 3 || store == nil || len(store.List(model.KindVirtualService)) != 0 {
		t.Errorf("snapshot: %d services, %d endpoints", len(d.Services()), len(d.Endpoints(reviewsHost)))
	}
}

func TestControllerHasSyncedWaitsForInformers(t *testing.T) {
	client := fake.NewClientset(shopObjects()...)
	// Listing pods fails until released (a reactor must not block: the fake serializes every call).
	var released atomic.Bool
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if released.Load() {
			return false, nil, nil // fall through to the tracker
		}
		return true, nil, fmt.Errorf("pods are not ready to be listed")
	})
	h := startHarness(t, client, nil)
	// Services, slices and nodes sync; pods cannot. Wait until the others have, then check.
	waitFor(t, "the service informer", h.c.servicesInf.HasSynced)
	waitFor(t, "the slice informer", h.c.slicesInf.HasSynced)
	if h.c.HasSynced() || len(h.c.Services()) != 0 || h.pushes.Count() != 0 {
		t.Fatalf("synced=%v with %d services and %d pushes before the pods were listed", h.c.HasSynced(),
			len(h.c.Services()), h.pushes.Count())
	}
	released.Store(true)
	h.synced()
	if len(h.c.Services()) != 2 || len(h.c.Workloads()) != 3 {
		t.Fatalf("after sync: %d services, %d workloads", len(h.c.Services()), len(h.c.Workloads()))
	}
}

func TestControllerEndpointSliceChangeIsEndpointPush(t *testing.T) {
	h := newHarness(t, nil, shopObjects()...)
	h.synced()
	h.pushes.WaitMerged(t, 0)

	// Scale up: a new ready endpoint in the reviews slice.
	sl := slice("shop", "reviews-abc", "reviews", ready("10.0.0.1"), sliceEP{ip: "10.0.0.2"},
		sliceEP{ip: "10.0.0.3", serving: true, terminating: true}, ready("10.0.0.4"))
	req := h.change("scale up", func(ctx context.Context) error {
		_, err := h.client.DiscoveryV1().EndpointSlices("shop").Update(ctx, sl, metav1.UpdateOptions{})
		return err
	})
	want := []string{"Endpoints/shop/" + reviewsHost}
	if req.Full || !slices.Equal(keys(req), want) || req.Reason[model.ReasonEndpointUpdate] == 0 {
		t.Fatalf("push full=%v keys=%v reasons=%v, want non-full %v", req.Full, keys(req), req.Reason, want)
	}
	if len(h.c.Endpoints(reviewsHost)) != 4 {
		t.Fatalf("%d endpoints after scale up", len(h.c.Endpoints(reviewsHost)))
	}

	// Pod 2 becomes ready: the slice says so.
	sl = slice("shop", "reviews-abc", "reviews", ready("10.0.0.1"), ready("10.0.0.2"))
	req = h.change("readiness", func(ctx context.Context) error {
		_, err := h.client.DiscoveryV1().EndpointSlices("shop").Update(ctx, sl, metav1.UpdateOptions{})
		return err
	})
	if req.Full || !slices.Equal(keys(req), want) {
		t.Fatalf("push full=%v keys=%v", req.Full, keys(req))
	}
	if e := endpointsOf(h.c, reviewsHost)["10.0.0.2:8080"]; e == nil || e.Health != model.Healthy {
		t.Fatalf("endpoint 10.0.0.2: %+v", e)
	}

	// Deleting the slice removes the endpoints, again as an endpoint push.
	req = h.change("slice delete", func(ctx context.Context) error {
		return h.client.DiscoveryV1().EndpointSlices("shop").Delete(ctx, "reviews-abc", metav1.DeleteOptions{})
	})
	if req.Full || !slices.Equal(keys(req), want) || len(h.c.Endpoints(reviewsHost)) != 0 {
		t.Fatalf("push full=%v keys=%v, %d endpoints left", req.Full, keys(req), len(h.c.Endpoints(reviewsHost)))
	}
}

func TestControllerServiceChangeIsFullPush(t *testing.T) {
	h := newHarness(t, nil, shopObjects()...)
	h.synced()
	h.pushes.WaitMerged(t, 0)

	req := h.change("port change", func(ctx context.Context) error {
		_, err := h.client.CoreV1().Services("shop").Update(ctx, service("shop", "reviews", 9090, map[string]string{"app": "reviews"}), metav1.UpdateOptions{})
		return err
	})
	if !req.Full || req.Reason[model.ReasonServiceUpdate] == 0 || !slices.Contains(keys(req), "Service/shop/"+reviewsHost) {
		t.Fatalf("push full=%v keys=%v reasons=%v", req.Full, keys(req), req.Reason)
	}
	for _, k := range keys(req) {
		if k != "Service/shop/"+reviewsHost && k != "Endpoints/shop/"+reviewsHost {
			t.Errorf("unexpected key %s", k)
		}
	}
	var svc *model.Service
	for _, s := range h.c.Services() {
		if s.Hostname == reviewsHost {
			svc = s
		}
	}
	if svc == nil || svc.Ports[0].Port != 9090 {
		t.Fatalf("service %+v", svc)
	}
	for _, e := range h.c.Endpoints(reviewsHost) {
		if e.ServicePort != 9090 {
			t.Errorf("endpoint %s:%d still serves port %d", e.Address, e.Port, e.ServicePort)
		}
	}

	// A new service with a selector is a full push; the pods it now selects are named.
	req = h.change("service add", func(ctx context.Context) error {
		_, err := h.client.CoreV1().Services("shop").Create(ctx, service("shop", "reviews-canary", 9080, map[string]string{"app": "reviews"}), metav1.CreateOptions{})
		return err
	})
	wantKeys := []string{"Pod/shop/reviews-1", "Pod/shop/reviews-2", "Service/shop/reviews-canary.shop.svc.cluster.local"}
	if !req.Full || !slices.Equal(keys(req), wantKeys) {
		t.Fatalf("push full=%v keys=%v, want %v", req.Full, keys(req), wantKeys)
	}

	req = h.change("service delete", func(ctx context.Context) error {
		return h.client.CoreV1().Services("shop").Delete(ctx, "ratings", metav1.DeleteOptions{})
	})
	if !req.Full || !slices.Contains(keys(req), "Service/shop/ratings.shop.svc.cluster.local") ||
		!slices.Contains(keys(req), "Endpoints/shop/ratings.shop.svc.cluster.local") {
		t.Fatalf("push full=%v keys=%v", req.Full, keys(req))
	}
	if len(h.c.Endpoints("ratings.shop.svc.cluster.local")) != 0 {
		t.Error("endpoints of a deleted service are still served")
	}

	// An update that changes nothing the model holds (status) pushes nothing: the next push is the next change.
	n := h.pushes.Count()
	st := service("shop", "reviews", 9090, map[string]string{"app": "reviews"})
	st.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "1.2.3.4"}}
	if _, err := h.client.CoreV1().Services("shop").Update(h.ctx, st, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	req = h.change("marker slice change", func(ctx context.Context) error {
		_, err := h.client.DiscoveryV1().EndpointSlices("shop").Update(ctx, slice("shop", "reviews-abc", "reviews", ready("10.0.0.1")), metav1.UpdateOptions{})
		return err
	})
	if req.Full || h.pushes.Count() != n+1 {
		t.Fatalf("the status-only update pushed: %d pushes, full=%v keys=%v", h.pushes.Count()-n, req.Full, keys(req))
	}
}

func TestControllerPodChanges(t *testing.T) {
	h := newHarness(t, nil, shopObjects()...)
	h.synced()
	h.pushes.WaitMerged(t, 0)

	// A label no selector looks at: the endpoint labels change (non-full), no pod key.
	p := pod("shop", "reviews-1", "10.0.0.1", "node-a", map[string]string{"app": "reviews", "version": "v2"})
	req := h.change("extra label", func(ctx context.Context) error {
		_, err := h.client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if req.Full || !slices.Equal(keys(req), []string{"Endpoints/shop/" + reviewsHost}) {
		t.Fatalf("push full=%v keys=%v", req.Full, keys(req))
	}
	if e := endpointsOf(h.c, reviewsHost)["10.0.0.1:8080"]; e.Labels["version"] != "v2" {
		t.Fatalf("endpoint labels %v", e.Labels)
	}

	// A relabel that moves the pod out of reviews and into ratings: full push naming the pod.
	p = pod("shop", "reviews-1", "10.0.0.1", "node-a", map[string]string{"app": "ratings"})
	req = h.change("relabel", func(ctx context.Context) error {
		_, err := h.client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if !req.Full || !slices.Contains(keys(req), "Pod/shop/reviews-1") {
		t.Fatalf("push full=%v keys=%v, want a full push with Pod/shop/reviews-1", req.Full, keys(req))
	}

	// A new pod not yet in any slice is a workload (proxies find it) but changes no endpoint.
	if _, err := h.client.CoreV1().Pods("shop").Create(h.ctx, pod("shop", "reviews-3", "10.0.0.9", "node-a", map[string]string{"app": "reviews"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new pod's workload", func() bool {
		for _, w := range h.c.Workloads() {
			if w.Key() == "reviews-3.shop" && w.IP == "10.0.0.9" && w.Locality == "eu-west/eu-west-1a/rack7" {
				return true
			}
		}
		return false
	})

	// Deleting a pod whose IP a slice still lists: the endpoint stays (the slice rules), without pod details.
	req = h.change("pod delete", func(ctx context.Context) error {
		return h.client.CoreV1().Pods("shop").Delete(ctx, "reviews-2", metav1.DeleteOptions{})
	})
	if req.Full || !slices.Equal(keys(req), []string{"Endpoints/shop/" + reviewsHost}) {
		t.Fatalf("push full=%v keys=%v", req.Full, keys(req))
	}
	if e := endpointsOf(h.c, reviewsHost)["10.0.0.2:8080"]; e == nil || e.ServiceAccount != "" || e.TLSMode != model.TLSModeDisabled {
		t.Fatalf("endpoint of the deleted pod: %+v", e)
	}
}

func TestControllerNodeLabelChangeIsEndpointPush(t *testing.T) {
	h := newHarness(t, nil, shopObjects()...)
	h.synced()
	h.pushes.WaitMerged(t, 0)

	req := h.change("zone relabel", func(ctx context.Context) error {
		_, err := h.client.CoreV1().Nodes().Update(ctx, node("node-a", map[string]string{LabelRegion: "eu-west", LabelZone: "eu-west-1b"}), metav1.UpdateOptions{})
		return err
	})
	if req.Full || !slices.Equal(keys(req), []string{"Endpoints/shop/" + reviewsHost}) {
		t.Fatalf("push full=%v keys=%v, want the endpoints of reviews only", req.Full, keys(req))
	}
	if e := endpointsOf(h.c, reviewsHost)["10.0.0.1:8080"]; e.Locality != "eu-west/eu-west-1b" {
		t.Fatalf("locality %q", e.Locality)
	}
	// The pod's own istio-locality label wins over its node.
	p := pod("shop", "reviews-1", "10.0.0.1", "node-a", map[string]string{"app": "reviews", LabelIstioLocality: "us.east.r1"})
	h.change("pod locality", func(ctx context.Context) error {
		_, err := h.client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{})
		return err
	})
	if e := endpointsOf(h.c, reviewsHost)["10.0.0.1:8080"]; e.Locality != "us/east/r1" {
		t.Fatalf("locality %q", e.Locality)
	}
}

func TestControllerExternalNameService(t *testing.T) {
	ext := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com",
			Ports: []corev1.ServicePort{{Name: "tcp", Port: 5432}}},
	}
	h := newHarness(t, nil, namespace("shop", nil), ext)
	h.synced()
	eps := h.c.Endpoints("db.shop.svc.cluster.local")
	if len(eps) != 1 || eps[0].Address != "db.example.com" || eps[0].Port != 5432 {
		t.Fatalf("endpoints %+v", eps)
	}
}

func meshOn() []*meshconfig.LabelSelector {
	return []*meshconfig.LabelSelector{{MatchLabels: map[string]string{"mesh": "on"}}}
}

func TestControllerDiscoverySelectors(t *testing.T) {
	objs := shopObjects()
	objs[0] = namespace("shop", map[string]string{"mesh": "on"})
	objs = append(objs,
		namespace("legacy", nil),
		service("legacy", "billing", 8000, map[string]string{"app": "billing"}),
		pod("legacy", "billing-1", "10.0.2.1", "node-a", map[string]string{"app": "billing"}),
		slice("legacy", "billing-abc", "billing", ready("10.0.2.1")),
	)
	h := newHarness(t, meshOn(), objs...)
	h.synced()
	h.pushes.WaitMerged(t, 0)
	const billing = "billing.legacy.svc.cluster.local"

	hasService := func(host string) bool {
		return slices.ContainsFunc(h.c.Services(), func(s *model.Service) bool { return s.Hostname == host })
	}
	hasWorkload := func(key string) bool {
		return slices.ContainsFunc(h.c.Workloads(), func(w *model.Workload) bool { return w.Key() == key })
	}
	if hasService(billing) || hasWorkload("billing-1.legacy") || !hasService(reviewsHost) {
		t.Fatalf("unselected namespace visible or selected one missing: %d services", len(h.c.Services()))
	}
	// The informers keep only stubs of the unselected namespace's objects.
	for _, inf := range []*nsfilter.Informer{h.c.servicesInf, h.c.slicesInf, h.c.podsInf} {
		for _, o := range inf.Store().List() {
			m := o.(metav1.Object)
			if m.GetNamespace() == "legacy" != nsfilter.IsStub(m) {
				t.Errorf("%T %s/%s: stub=%v", o, m.GetNamespace(), m.GetName(), nsfilter.IsStub(m))
			}
		}
	}
	// Changes in the unselected namespace push nothing (checked with a marker change afterwards).
	n := h.pushes.Count()
	if _, err := h.client.CoreV1().Pods("legacy").Create(h.ctx, pod("legacy", "billing-2", "10.0.2.2", "node-a", map[string]string{"app": "billing"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.change("marker", func(ctx context.Context) error {
		_, err := h.client.DiscoveryV1().EndpointSlices("shop").Update(ctx, slice("shop", "ratings-abc", "ratings"), metav1.UpdateOptions{})
		return err
	})
	if got := h.pushes.Count() - n; got != 1 {
		t.Fatalf("%d pushes, want only the marker's", got)
	}

	// Selecting the namespace brings its objects in, with a full push naming the service.
	req := h.change("select legacy", func(ctx context.Context) error {
		_, err := h.client.CoreV1().Namespaces().Update(ctx, namespace("legacy", map[string]string{"mesh": "on"}), metav1.UpdateOptions{})
		return err
	})
	waitFor(t, "legacy's objects", func() bool {
		return hasService(billing) && len(h.c.Endpoints(billing)) == 1 && hasWorkload("billing-1.legacy") && hasWorkload("billing-2.legacy")
	})
	req = req.Merge(h.pushes.WaitMerged(t, n+1))
	if !req.Full || !slices.Contains(keys(req), "Service/legacy/"+billing) {
		t.Fatalf("push full=%v keys=%v", req.Full, keys(req))
	}
	if e := h.c.Endpoints(billing)[0]; e.ServiceAccount != "billing-1-sa" || e.Locality != "eu-west/eu-west-1a/rack7" {
		t.Errorf("endpoint %+v: pod details missing", e)
	}
	// Unselecting drops them again, with a full push.
	n = h.pushes.Count()
	req = h.change("unselect legacy", func(ctx context.Context) error {
		_, err := h.client.CoreV1().Namespaces().Update(ctx, namespace("legacy", nil), metav1.UpdateOptions{})
		return err
	})
	waitFor(t, "legacy's objects to go", func() bool { return !hasService(billing) && !hasWorkload("billing-1.legacy") })
	req = req.Merge(h.pushes.WaitMerged(t, n))
	if !req.Full || !slices.Contains(keys(req), "Service/legacy/"+billing) {
		t.Fatalf("push full=%v keys=%v", req.Full, keys(req))
	}
	if len(h.c.Endpoints(billing)) != 0 {
		t.Error("endpoints of an unselected namespace are served")
	}
}

// Changing the selectors themselves (a mesh config reload) re-evaluates every namespace.
func TestControllerSetSelectors(t *testing.T) {
	objs := append(shopObjects(), namespace("legacy", map[string]string{"team": "billing"}),
		service("legacy", "billing", 8000, map[string]string{"app": "billing"}))
	h := newHarness(t, nil, objs...)
	h.synced()
	if len(h.c.Services()) != 3 {
		t.Fatalf("%d services without selectors, want 3", len(h.c.Services()))
	}
	if err := h.c.Filter().SetSelectors([]*meshconfig.LabelSelector{{MatchExpressions: []*meshconfig.LabelSelectorRequirement{
		{Key: "team", Operator: "In", Values: []string{"billing"}},
	}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "only legacy's service", func() bool {
		s := h.c.Services()
		return len(s) == 1 && s[0].Hostname == "billing.legacy.svc.cluster.local"
	})
	if err := h.c.Filter().SetSelectors(nil); err != nil {
		t.Fatal(err)
	}
	// Each kind is listed on its own, so services and endpoints come back one after the other.
	waitFor(t, "every service and the endpoints again", func() bool {
		return len(h.c.Services()) == 3 && len(h.c.Endpoints(reviewsHost)) == 3 && len(h.c.Workloads()) == 3
	})
	if _, err := nsfilter.ConvertSelectors([]*meshconfig.LabelSelector{{MatchExpressions: []*meshconfig.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}}); err == nil {
		t.Error("an unknown operator was accepted")
	}
}
