package crd

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	meshconfig "istio.io/api/mesh/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	clientnetv1 "istio.io/client-go/pkg/apis/networking/v1"
	clientnetv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	clientsecv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery"
	kubefake "k8s.io/client-go/kubernetes/fake"
	metafake "k8s.io/client-go/metadata/fake"
	k8stesting "k8s.io/client-go/testing"

	mtest "github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/config"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/serviceregistry/kube/nsfilter"
)

func TestMain(m *testing.M) {
	// The generated Istio fake clientset cannot stream lists (watch-list, on by default in client-go): without
	// this, its informers would wait for a bookmark the fake never sends. The real API server supports it.
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	os.Exit(m.Run())
}

// --- fakes ---

// fakeDiscovery serves a changeable set of resources per group version; everything else is not found.
type fakeDiscovery struct {
	discovery.DiscoveryInterface
	mu     sync.Mutex
	served map[string][]string
	err    error
	calls  int
}

func (f *fakeDiscovery) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	res, ok := f.served[gv]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Group: gv}, "")
	}
	out := &metav1.APIResourceList{GroupVersion: gv}
	for _, r := range res {
		out.APIResources = append(out.APIResources, metav1.APIResource{Name: r, Namespaced: true})
	}
	return out, nil
}

func (f *fakeDiscovery) set(gv string, resources ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if resources == nil {
		delete(f.served, gv)
		return
	}
	f.served[gv] = resources
}

func (f *fakeDiscovery) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeDiscovery) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

var allNetworking = []string{"virtualservices", "destinationrules", "gateways", "serviceentries", "workloadentries", "sidecars"}

func servingEverything() *fakeDiscovery {
	return &fakeDiscovery{served: map[string][]string{
		"networking.istio.io/v1":       allNetworking,
		"networking.istio.io/v1beta1":  allNetworking,
		"networking.istio.io/v1alpha3": allNetworking,
		"security.istio.io/v1":         {"peerauthentications", "authorizationpolicies"},
		"security.istio.io/v1beta1":    {"peerauthentications", "authorizationpolicies"},
	}}
}

// raceFreeWatches makes the Istio fake deliver objects created between an informer's list and its watch (the
// generated fake drops them, the Kubernetes one does not).
func raceFreeWatches(c *istiofake.Clientset) {
	c.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if wa, ok := a.(k8stesting.WatchActionImpl); ok {
			opts = wa.ListOptions
		}
		w, err := c.Tracker().Watch(a.GetResource(), a.GetNamespace(), opts)
		return true, w, err
	})
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines(substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.b.String(), "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

type recorder = mtest.Recorder

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	mtest.Eventually(t, 10*time.Second, what, cond)
}

type harness struct {
	t      *testing.T
	ic     *istiofake.Clientset
	kc     *kubefake.Clientset
	meta   *metafake.FakeMetadataClient
	disco  *fakeDiscovery
	store  *Store
	pushes *recorder
	logs   *lockedBuffer
	ctx    context.Context
}

type setup struct {
	disco     *fakeDiscovery
	selectors []*meshconfig.LabelSelector
	istio     []runtime.Object
	kube      []runtime.Object
	interval  time.Duration
}

func start(t *testing.T, s setup) *harness {
	t.Helper()
	if s.disco == nil {
		s.disco = servingEverything()
	}
	if s.kube == nil {
		s.kube = []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}}
	}
	h := &harness{
		t:      t,
		ic:     istiofake.NewSimpleClientset(s.istio...),
		kc:     kubefake.NewClientset(s.kube...),
		meta:   metafake.NewSimpleMetadataClient(metafake.NewTestScheme()),
		disco:  s.disco,
		pushes: &recorder{},
		logs:   &lockedBuffer{},
	}
	raceFreeWatches(h.ic)
	logger := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	filter, err := nsfilter.New(h.kc, s.selectors, logger)
	if err != nil {
		t.Fatal(err)
	}
	h.store, err = New(h.ic, Options{
		Filter: filter, OnChange: h.pushes.Record, Discovery: h.disco, CRDs: h.meta,
		RecheckInterval: s.interval, Logger: logger,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.ctx = ctx
	if err := h.store.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.store.Done():
		case <-time.After(10 * time.Second):
			t.Error("store did not stop")
		}
		if t.Failed() {
			t.Logf("logs:\n%s", h.logs.b.String())
		}
	})
	return h
}

// synced waits for the store to sync and report it (HasSynced turns true just before the push).
func (h *harness) synced() {
	h.t.Helper()
	waitFor(h.t, "the store to sync", func() bool { return h.store.HasSynced() && h.pushes.Count() > 0 })
}

// change runs an API change and waits for the push it causes.
func (h *harness) change(what string, f func(ctx context.Context) error) *model.PushRequest {
	h.t.Helper()
	n := h.pushes.Count()
	if err := f(h.ctx); err != nil {
		h.t.Fatalf("%s: %v", what, err)
	}
	waitFor(h.t, "the push of "+what, func() bool { return h.pushes.Count() > n })
	if got := h.pushes.Count(); got != n+1 {
		h.t.Fatalf("%s: %d pushes, want 1", what, got-n)
	}
	return h.pushes.At(n)
}

// marker makes a change that certainly pushes, to show that what came before it did not.
func (h *harness) marker(name string) {
	h.t.Helper()
	h.change("marker "+name, func(ctx context.Context) error {
		_, err := h.ic.NetworkingV1().Gateways("default").Create(ctx, &clientnetv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
			Spec: networking.Gateway{Servers: []*networking.Server{{
				Port: &networking.Port{Number: 80, Name: "http", Protocol: "HTTP"}, Hosts: []string{"*"},
			}}},
		}, metav1.CreateOptions{})
		return err
	})
}

func vs(ns, name string, weights ...int32) *clientnetv1.VirtualService {
	route := &networking.HTTPRoute{}
	for i, w := range weights {
		route.Route = append(route.Route, &networking.HTTPRouteDestination{
			Destination: &networking.Destination{Host: "reviews", Subset: fmt.Sprintf("v%d", i+1)}, Weight: w,
		})
	}
	return &clientnetv1.VirtualService{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "reviews"},
			Annotations: map[string]string{lastApplied: "{...}", "note": "kept"}},
		Spec: networking.VirtualService{Hosts: []string{"reviews"}, Http: []*networking.HTTPRoute{route}},
	}
}

func onlyKey(t *testing.T, req *model.PushRequest, want model.ConfigKey) {
	t.Helper()
	if !req.Full || req.Reason[model.ReasonConfigUpdate] != 1 || len(req.ConfigsUpdated) != 1 {
		t.Fatalf("push %+v, want one full config push", req)
	}
	if _, ok := req.ConfigsUpdated[want]; !ok {
		t.Fatalf("push keys %v, want %v", req.ConfigsUpdated, want)
	}
}

func weights(c *model.Config) []int32 {
	var out []int32
	for _, r := range c.Spec.(*networking.VirtualService).Http[0].Route {
		out = append(out, r.Weight)
	}
	return out
}

// --- tests ---

func TestStoreVirtualServiceLifecycle(t *testing.T) {
	existing := vs("default", "ratings", 100)
	h := start(t, setup{istio: []runtime.Object{existing}})
	h.synced()
	if h.pushes.Count() != 1 || !h.pushes.At(0).Full {
		t.Fatalf("sync: %d pushes, want one full push", h.pushes.Count())
	}
	if got := h.store.List(model.KindVirtualService); len(got) != 1 || got[0].Name != "ratings" {
		t.Fatalf("after sync: %v", got)
	}
	for k, v := range h.store.Watched() {
		if v != "v1" {
			t.Errorf("%s watched at %q, want v1", k, v)
		}
	}

	key := model.ConfigKey{Kind: model.KindVirtualService, Namespace: "default", Name: "reviews"}
	req := h.change("create", func(ctx context.Context) error {
		_, err := h.ic.NetworkingV1().VirtualServices("default").Create(ctx, vs("default", "reviews", 80, 20), metav1.CreateOptions{})
		return err
	})
	onlyKey(t, req, key)
	cfg := find(h.store.List(model.KindVirtualService), "reviews")
	if cfg == nil || cfg.Source != Source || cfg.Labels["app"] != "reviews" || !slices.Equal(weights(cfg), []int32{80, 20}) {
		t.Fatalf("config %+v", cfg)
	}
	if cfg.Annotations["note"] != "kept" || cfg.Annotations[lastApplied] != "" {
		t.Errorf("annotations %v: the last-applied copy is dropped, the rest kept", cfg.Annotations)
	}
	// The spec is a copy: the informer's object is left alone when the config is changed.
	cfg.Spec.(*networking.VirtualService).Hosts[0] = "changed"
	if obj, err := h.ic.NetworkingV1().VirtualServices("default").Get(h.ctx, "reviews", metav1.GetOptions{}); err != nil || obj.Spec.Hosts[0] != "reviews" {
		t.Fatalf("get: %v %v", obj, err)
	}

	req = h.change("update", func(ctx context.Context) error {
		_, err := h.ic.NetworkingV1().VirtualServices("default").Update(ctx, vs("default", "reviews", 50, 50), metav1.UpdateOptions{})
		return err
	})
	onlyKey(t, req, key)
	if cfg := find(h.store.List(model.KindVirtualService), "reviews"); !slices.Equal(weights(cfg), []int32{50, 50}) {
		t.Fatalf("after update: %v", weights(cfg))
	}

	req = h.change("delete", func(ctx context.Context) error {
		return h.ic.NetworkingV1().VirtualServices("default").Delete(ctx, "reviews", metav1.DeleteOptions{})
	})
	onlyKey(t, req, key)
	if cfg := find(h.store.List(model.KindVirtualService), "reviews"); cfg != nil {
		t.Fatal("deleted config still served")
	}

	// Security kinds come from security.istio.io/v1 with the v1beta1 messages.
	req = h.change("authorization policy", func(ctx context.Context) error {
		_, err := h.ic.SecurityV1().AuthorizationPolicies("default").Create(ctx, &clientsecv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "deny-all"},
			Spec:       securityapi.AuthorizationPolicy{},
		}, metav1.CreateOptions{})
		return err
	})
	onlyKey(t, req, model.ConfigKey{Kind: model.KindAuthorizationPolicy, Namespace: "default", Name: "deny-all"})
	if ap := h.store.List(model.KindAuthorizationPolicy); len(ap) != 1 {
		t.Fatalf("authorization policies %v", ap)
	} else if _, ok := ap[0].Spec.(*securityapi.AuthorizationPolicy); !ok {
		t.Fatalf("spec %T", ap[0].Spec)
	}
	// Snapshot is the same view as List.
	if snap := h.store.Snapshot(); len(snap.List(model.KindAuthorizationPolicy)) != 1 || len(snap.List(model.KindVirtualService)) != 1 {
		t.Fatal("snapshot differs from List")
	}
}

func find(cfgs []*model.Config, name string) *model.Config {
	for _, c := range cfgs {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func rejected(kind string) float64 {
	return testutil.ToFloat64(config.RejectedConfigs.WithLabelValues(kind))
}

func TestStoreRejectsInvalidObjectsKeepingThePreviousVersion(t *testing.T) {
	h := start(t, setup{})
	h.synced()
	h.change("valid", func(ctx context.Context) error {
		_, err := h.ic.NetworkingV1().VirtualServices("default").Create(ctx, vs("default", "reviews", 90, 10), metav1.CreateOptions{})
		return err
	})
	before := rejected("VirtualService")
	n := h.pushes.Count()
	if _, err := h.ic.NetworkingV1().VirtualServices("default").Update(h.ctx, vs("default", "reviews", 110, -10), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rejection to be counted and logged", func() bool {
		return rejected("VirtualService") == before+1 && len(h.logs.lines("rejected invalid object")) == 1
	})
	lines := h.logs.lines("rejected invalid object")
	if len(lines) != 1 || !strings.Contains(lines[0], "name=reviews") || !strings.Contains(lines[0], "namespace=default") ||
		!strings.Contains(lines[0], "weight") || !strings.Contains(lines[0], "keptPrevious=true") {
		t.Fatalf("rejection log %q", lines)
	}
	if cfg := find(h.store.List(model.KindVirtualService), "reviews"); !slices.Equal(weights(cfg), []int32{90, 10}) {
		t.Fatalf("served %v, want the previous valid version", weights(cfg))
	}
	// The rejection pushed nothing: the next push is the marker's.
	h.marker("m1")
	if h.pushes.Count() != n+1 {
		t.Fatalf("%d pushes, want only the marker's", h.pushes.Count()-n)
	}

	// An object that was never valid is not served at all.
	if _, err := h.ic.NetworkingV1().VirtualServices("default").Create(h.ctx, vs("default", "broken", -1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second rejection", func() bool { return rejected("VirtualService") == before+2 })
	if find(h.store.List(model.KindVirtualService), "broken") != nil {
		t.Fatal("an invalid object is served")
	}
	// Fixing it serves it.
	h.change("fix", func(ctx context.Context) error {
		_, err := h.ic.NetworkingV1().VirtualServices("default").Update(ctx, vs("default", "broken", 100), metav1.UpdateOptions{})
		return err
	})
	if find(h.store.List(model.KindVirtualService), "broken") == nil {
		t.Fatal("the fixed object is not served")
	}
}

func withoutSecurity() *fakeDiscovery {
	disco := servingEverything()
	disco.set("security.istio.io/v1")
	disco.set("security.istio.io/v1beta1")
	return disco
}

func TestStoreLogsAKindNotServedOnce(t *testing.T) {
	disco := withoutSecurity()
	h := start(t, setup{disco: disco, interval: 10 * time.Millisecond})
	h.synced()
	if w := h.store.Watched(); w[model.KindAuthorizationPolicy] != "" || w[model.KindPeerAuthentication] != "" || w[model.KindVirtualService] != "v1" {
		t.Fatalf("watched %v", w)
	}
	// Many rechecks later, still one line per missing kind.
	calls := disco.callCount()
	waitFor(t, "several rechecks", func() bool { return disco.callCount() > calls+5*5 })
	lines := strings.Join(h.logs.lines("Istio CRD not installed"), "\n")
	if strings.Count(lines, "\n") != 1 || !strings.Contains(lines, "crd=authorizationpolicies.security.istio.io") ||
		!strings.Contains(lines, "crd=peerauthentications.security.istio.io") {
		t.Fatalf("log lines %q, want one per missing kind", lines)
	}
}

// The periodic recheck is an hour away: installing the CRD is noticed through the CustomResourceDefinition watch.
func TestStorePicksUpAKindWhenItsCRDIsInstalled(t *testing.T) {
	disco := withoutSecurity()
	ap := &clientsecv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "allow-nothing"}}
	h := start(t, setup{disco: disco, interval: time.Hour, istio: []runtime.Object{ap}})
	h.synced()
	if len(h.store.List(model.KindAuthorizationPolicy)) != 0 {
		t.Fatal("a kind not served is listed")
	}

	n := h.pushes.Count()
	disco.set("security.istio.io/v1", "peerauthentications", "authorizationpolicies")
	crds := h.meta.Resource(CRDResource).(metafake.MetadataClient)
	crd := &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition"},
		ObjectMeta: metav1.ObjectMeta{Name: "authorizationpolicies.security.istio.io"},
	}
	if _, err := crds.CreateFake(crd, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the authorization policy", func() bool { return len(h.store.List(model.KindAuthorizationPolicy)) == 1 })
	waitFor(t, "its push", func() bool { return h.pushes.Count() > n })
	onlyKey(t, h.pushes.At(n), model.ConfigKey{Kind: model.KindAuthorizationPolicy, Namespace: "default", Name: "allow-nothing"})
	if w := h.store.Watched(); w[model.KindAuthorizationPolicy] != "v1" || w[model.KindPeerAuthentication] != "v1" {
		t.Fatalf("watched %v", w)
	}

	// Removed again: its objects are dropped, with a push naming them.
	n = h.pushes.Count()
	disco.set("security.istio.io/v1")
	if err := crds.Delete(h.ctx, crd.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the authorization policy to go", func() bool { return len(h.store.List(model.KindAuthorizationPolicy)) == 0 })
	waitFor(t, "the push", func() bool { return h.pushes.Count() > n })
	onlyKey(t, h.pushes.At(n), model.ConfigKey{Kind: model.KindAuthorizationPolicy, Namespace: "default", Name: "allow-nothing"})
	if len(h.logs.lines("Istio CRD no longer served")) != 2 {
		t.Errorf("removal lines %q", h.logs.lines("Istio CRD no longer served"))
	}
}

func TestStoreFallsBackToOlderVersions(t *testing.T) {
	disco := &fakeDiscovery{served: map[string][]string{
		"networking.istio.io/v1alpha3": allNetworking,
		"security.istio.io/v1beta1":    {"peerauthentications", "authorizationpolicies"},
	}}
	old := &clientnetv1alpha3.VirtualService{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "legacy"},
		Spec: networking.VirtualService{Hosts: []string{"legacy"}, Http: []*networking.HTTPRoute{{
			Route: []*networking.HTTPRouteDestination{{Destination: &networking.Destination{Host: "legacy"}}},
		}}},
	}
	h := start(t, setup{disco: disco, istio: []runtime.Object{old}})
	h.synced()
	w := h.store.Watched()
	if w[model.KindVirtualService] != "v1alpha3" || w[model.KindAuthorizationPolicy] != "v1beta1" {
		t.Fatalf("watched %v", w)
	}
	got := h.store.List(model.KindVirtualService)
	if len(got) != 1 || !proto.Equal(got[0].Spec, &old.Spec) {
		t.Fatalf("configs %v", got)
	}
}

func TestStoreHasSyncedWaitsForDiscovery(t *testing.T) {
	disco := servingEverything()
	disco.setErr(apierrors.NewServiceUnavailable("discovery is warming up"))
	h := start(t, setup{disco: disco})
	waitFor(t, "discovery to be asked", func() bool { return disco.callCount() > 0 })
	if h.store.HasSynced() {
		t.Fatal("synced while discovery fails")
	}
	waitFor(t, "the error to be logged", func() bool { return len(h.logs.lines("cannot tell which Istio kinds are served")) == 1 })
	disco.setErr(nil)
	h.synced()
}

func TestStoreDiscoverySelectors(t *testing.T) {
	h := start(t, setup{
		selectors: []*meshconfig.LabelSelector{{MatchLabels: map[string]string{"mesh": "on"}}},
		kube: []runtime.Object{
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default", Labels: map[string]string{"mesh": "on"}}},
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "legacy"}},
		},
		istio: []runtime.Object{vs("default", "reviews", 100), vs("legacy", "billing", 100)},
	})
	h.synced()
	if got := h.store.List(model.KindVirtualService); len(got) != 1 || got[0].Namespace != "default" {
		t.Fatalf("configs %v, want only default's", got)
	}
	n := h.pushes.Count()
	if _, err := h.kc.CoreV1().Namespaces().Update(h.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "legacy", Labels: map[string]string{"mesh": "on"}}}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "legacy's VirtualService", func() bool { return find(h.store.List(model.KindVirtualService), "billing") != nil })
	waitFor(t, "its push", func() bool { return h.pushes.Count() > n })
	onlyKey(t, h.pushes.At(n), model.ConfigKey{Kind: model.KindVirtualService, Namespace: "legacy", Name: "billing"})

	n = h.pushes.Count()
	if _, err := h.kc.CoreV1().Namespaces().Update(h.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "legacy"}}, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "legacy's VirtualService to go", func() bool { return find(h.store.List(model.KindVirtualService), "billing") == nil })
	waitFor(t, "its push", func() bool { return h.pushes.Count() > n })
	onlyKey(t, h.pushes.At(n), model.ConfigKey{Kind: model.KindVirtualService, Namespace: "legacy", Name: "billing"})
}
