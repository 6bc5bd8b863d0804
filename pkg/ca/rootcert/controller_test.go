package rootcert_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/meshd/meshd/pkg/ca/rootcert"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

// eventually polls cond until it holds, failing after a generous deadline.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func hasRoot(cs kubernetes.Interface, ns string, root []byte) func() error {
	return func() error {
		cm, err := cs.CoreV1().ConfigMaps(ns).Get(context.Background(), rootcert.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cm.Data[rootcert.DataKey] != string(root) || cm.Labels[rootcert.ConfigLabel] != "true" {
			return fmt.Errorf("%s/%s holds %q, labels %v", ns, cm.Name, cm.Data[rootcert.DataKey], cm.Labels)
		}
		return nil
	}
}

// run runs the controller like the leader elector does and returns the function that ends the term.
func run(c *rootcert.Controller) (stop func()) {
	ch := make(chan struct{})
	done := make(chan struct{})
	go func() { c.Run(ch); close(done) }()
	return func() { close(ch); <-done }
}

type root struct{ v atomic.Value }

func (r *root) set(s string) { r.v.Store([]byte(s)) }
func (r *root) get() []byte  { return r.v.Load().([]byte) }
func newRoot(s string) *root { r := &root{}; r.set(s); return r }

func TestConfigMapInEveryNamespace(t *testing.T) {
	cs := fake.NewClientset(namespace("default", nil), namespace("shop", nil), namespace("kube-system", nil),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: rootcert.ConfigMapName, Namespace: "shop"},
			Data: map[string]string{rootcert.DataKey: "stale root", "extra": "kept"}})
	r := newRoot("root-1")
	c, err := rootcert.New(cs, r.get, rootcert.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(c)
	defer func() { stop() }() // the last term's
	ctx := context.Background()
	cms := func(ns string) typedcorev1.ConfigMapInterface { return cs.CoreV1().ConfigMaps(ns) }

	eventually(t, "ConfigMap in default", hasRoot(cs, "default", r.get()))
	eventually(t, "stale ConfigMap in shop fixed", hasRoot(cs, "shop", r.get()))
	if cm, _ := cms("shop").Get(ctx, rootcert.ConfigMapName, metav1.GetOptions{}); cm.Data["extra"] != "kept" {
		t.Error("fixing the root dropped another key")
	}

	if _, err := cs.CoreV1().Namespaces().Create(ctx, namespace("new", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ConfigMap in a new namespace", hasRoot(cs, "new", r.get()))

	if err := cms("default").Delete(ctx, rootcert.ConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted ConfigMap recreated", hasRoot(cs, "default", r.get()))

	cm, err := cms("new").Get(ctx, rootcert.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[rootcert.DataKey] = "-----BEGIN CERTIFICATE-----\nsomeone else's root\n-----END CERTIFICATE-----\n"
	if _, err := cms("new").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "edited ConfigMap repaired", hasRoot(cs, "new", r.get()))

	r.set("root-2")
	c.RootChanged()
	for _, ns := range []string{"default", "shop", "new"} {
		eventually(t, "new root in "+ns, hasRoot(cs, ns, r.get()))
	}

	if _, err := cms("kube-system").Get(ctx, rootcert.ConfigMapName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("kube-system: %v, want no ConfigMap", err)
	}

	// A new term of leadership after a lost one: deletions while nobody led are repaired.
	stop()
	if err := cms("shop").Delete(ctx, rootcert.ConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	stop = run(c)
	eventually(t, "ConfigMap recreated in the next term", hasRoot(cs, "shop", r.get()))
}

// labelFilter selects namespaces by one label, like discoverySelectors, and tells subscribers when that
// changes.
type labelFilter struct {
	mu       sync.Mutex
	selected map[string]bool
	subs     []func(added, removed []string)
}

func (f *labelFilter) Selected(ns string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.selected[ns]
}

func (f *labelFilter) Subscribe(fn func(added, removed []string)) func() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subs = append(f.subs, fn)
	i := len(f.subs) - 1
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.subs[i] = nil
	}
}

func (f *labelFilter) selectNS(ns string) {
	f.mu.Lock()
	f.selected[ns] = true
	subs := slices.Clone(f.subs)
	f.mu.Unlock()
	for _, fn := range subs {
		if fn != nil {
			fn([]string{ns}, nil)
		}
	}
}

func TestNamespaceFilter(t *testing.T) {
	cs := fake.NewClientset(namespace("mesh", nil), namespace("outside", nil))
	f := &labelFilter{selected: map[string]bool{"mesh": true}}
	r := newRoot("root")
	c, err := rootcert.New(cs, r.get, rootcert.Options{Filter: f, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(c)
	defer stop()
	eventually(t, "ConfigMap in the selected namespace", hasRoot(cs, "mesh", r.get()))
	if _, err := cs.CoreV1().ConfigMaps("outside").Get(context.Background(), rootcert.ConfigMapName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("unselected namespace: %v, want no ConfigMap", err)
	}
	f.selectNS("outside")
	eventually(t, "ConfigMap once the namespace is selected", hasRoot(cs, "outside", r.get()))
}

func TestWriteFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "certs", "root-cert.pem")
	rootPEM := []byte("-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n")
	if err := rootcert.WriteFile(path, rootPEM); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, rootPEM) {
		t.Fatalf("%q, %v", got, err)
	}
	fi, _ := os.Stat(path)
	di, _ := os.Stat(filepath.Dir(path))
	if fi.Mode().Perm() != 0o644 || di.Mode().Perm() != 0o700 {
		t.Fatalf("file %v, directory %v; want 0644 and 0700", fi.Mode().Perm(), di.Mode().Perm())
	}
	before := fi.ModTime()
	if err := rootcert.WriteFile(path, rootPEM); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); !fi.ModTime().Equal(before) {
		t.Error("an unchanged root was rewritten")
	}
	if err := rootcert.WriteFile(path, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "new" {
		t.Fatalf("%q after an update", got)
	}
	if err := rootcert.WriteFile(path, nil); err == nil {
		t.Fatal("wrote an empty root")
	}
}
