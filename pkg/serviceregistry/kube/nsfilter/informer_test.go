package nsfilter

import (
	"context"
	"sync"
	"testing"
	"time"

	meshconfig "istio.io/api/mesh/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/meshd/meshd/internal/testutil"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, what, cond)
}

// sink is a handler keeping ConfigMaps by namespace/name, with their "v" data value.
type sink struct {
	mu   sync.Mutex
	objs map[string]string
}

func (s *sink) handler() Handler {
	return Handler{
		Upsert: func(obj runtime.Object) {
			cm := obj.(*corev1.ConfigMap)
			s.mu.Lock()
			defer s.mu.Unlock()
			s.objs[cm.Namespace+"/"+cm.Name] = cm.Data["v"]
		},
		Delete: func(ns, name string) {
			s.mu.Lock()
			defer s.mu.Unlock()
			delete(s.objs, ns+"/"+name)
		},
		DropNamespace: func(ns string) {
			s.mu.Lock()
			defer s.mu.Unlock()
			for k := range s.objs {
				if k[:len(ns)+1] == ns+"/" {
					delete(s.objs, k)
				}
			}
		},
	}
}

func (s *sink) get(key string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.objs[key]
	return v, ok
}

func cm(ns, name, v string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string]string{"v": v}}
}

func ns(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

// gatedList lists ConfigMaps, but a listing can be held back after it has its answer, to play the races
// between a namespace listing and the informer's own events.
type gatedList struct {
	client  *fake.Clientset
	mu      sync.Mutex
	hold    chan struct{} // when set, the next listing waits on it after listing
	started chan struct{} // closed when that listing has its answer
}

func (g *gatedList) list(ctx context.Context, ns string) (runtime.Object, error) {
	g.mu.Lock()
	hold, started := g.hold, g.started
	g.hold = nil
	g.mu.Unlock()
	l, err := g.client.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if hold != nil {
		close(started)
		<-hold
	}
	return l, err
}

type fixture struct {
	client *fake.Clientset
	filter *Filter
	inf    *Informer
	sink   *sink
	gate   *gatedList
	ctx    context.Context
}

func newFixture(t *testing.T, objs ...runtime.Object) *fixture {
	t.Helper()
	f := &fixture{client: fake.NewClientset(objs...), sink: &sink{objs: map[string]string{}}}
	f.gate = &gatedList{client: f.client}
	var err error
	f.filter, err = New(f.client, []*meshconfig.LabelSelector{{MatchLabels: map[string]string{"mesh": "on"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.inf, err = NewInformer(InformerOptions{
		Kind:     "ConfigMap",
		Informer: coreinformers.NewConfigMapInformer(f.client, metav1.NamespaceAll, 0, cache.Indexers{}),
		Filter:   f.filter,
		List:     f.gate.list,
		Handler:  f.sink.handler(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.ctx = ctx
	f.filter.Start(ctx)
	if !f.filter.WaitForSync(ctx) {
		t.Fatal("filter did not sync")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.inf.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitFor(t, "the informer to sync", f.inf.HasSynced)
	return f
}

func (f *fixture) selectNS(t *testing.T, name string, on bool) {
	t.Helper()
	labels := map[string]string{}
	if on {
		labels["mesh"] = "on"
	}
	if _, err := f.client.CoreV1().Namespaces().Update(f.ctx, ns(name, labels), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestInformerKeepsStubsAndListsOnSelection(t *testing.T) {
	f := newFixture(t, ns("a", map[string]string{"mesh": "on"}), ns("b", nil), cm("a", "x", "1"), cm("b", "y", "1"))
	if _, ok := f.sink.get("a/x"); !ok {
		t.Fatal("object of a selected namespace not handed over")
	}
	if _, ok := f.sink.get("b/y"); ok {
		t.Fatal("object of an unselected namespace handed over")
	}
	obj, ok, _ := f.inf.Store().GetByKey("b/y")
	if !ok || !IsStub(obj.(metav1.Object)) || obj.(*corev1.ConfigMap).Data != nil {
		t.Fatalf("informer keeps %+v for an unselected namespace, want a stub", obj)
	}

	f.selectNS(t, "b", true)
	waitFor(t, "b/y after selection", func() bool { v, ok := f.sink.get("b/y"); return ok && v == "1" })
	f.selectNS(t, "b", false)
	waitFor(t, "b/y to be dropped", func() bool { _, ok := f.sink.get("b/y"); return !ok })
	if _, ok := f.sink.get("a/x"); !ok {
		t.Fatal("dropping b dropped a's object")
	}
}

// A listing answered before an update but handed over after it must not undo the update.
func TestInformerListingDoesNotOverwriteNewerEvents(t *testing.T) {
	f := newFixture(t, ns("b", nil), cm("b", "y", "old"))
	hold, started := make(chan struct{}), make(chan struct{})
	f.gate.mu.Lock()
	f.gate.hold, f.gate.started = hold, started
	f.gate.mu.Unlock()

	f.selectNS(t, "b", true)
	<-started // the listing has its (old) answer and waits
	if _, err := f.client.CoreV1().ConfigMaps("b").Update(f.ctx, cm("b", "y", "new"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the update event", func() bool { v, _ := f.sink.get("b/y"); return v == "new" })
	close(hold)
	waitFor(t, "the listing to finish", func() bool { return f.inf.queue.Len() == 0 && !f.fetching() })
	if v, _ := f.sink.get("b/y"); v != "new" {
		t.Fatalf("b/y is %q after the stale listing, want the newer %q", v, "new")
	}
}

// A listing that still shows an object deleted meanwhile must not bring it back.
func TestInformerListingDoesNotResurrectDeletedObjects(t *testing.T) {
	f := newFixture(t, ns("b", nil), cm("b", "y", "1"))
	hold, started := make(chan struct{}), make(chan struct{})
	f.gate.mu.Lock()
	f.gate.hold, f.gate.started = hold, started
	f.gate.mu.Unlock()

	f.selectNS(t, "b", true)
	<-started
	if err := f.client.CoreV1().ConfigMaps("b").Delete(f.ctx, "y", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the delete to reach the informer", func() bool { _, ok, _ := f.inf.Store().GetByKey("b/y"); return !ok })
	close(hold)
	waitFor(t, "the listing to finish", func() bool { return f.inf.queue.Len() == 0 && !f.fetching() })
	if _, ok := f.sink.get("b/y"); ok {
		t.Fatal("a deleted object was brought back by a listing")
	}
}

func (f *fixture) fetching() bool {
	f.inf.mu.Lock()
	defer f.inf.mu.Unlock()
	return len(f.inf.fetching) > 0
}
