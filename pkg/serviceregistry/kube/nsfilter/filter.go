// Package nsfilter applies the mesh config discoverySelectors to what meshd reads from Kubernetes.
//
// A Filter decides which namespaces are selected: all of them when no selectors are set, else those whose labels
// match at least one selector (the selectors are OR-ed, the requirements inside one selector AND-ed, as in
// Istio). It follows the Namespaces of the cluster and tells subscribers when namespaces enter or leave the
// selection, because a label changed, a namespace was created or deleted, or the selectors were replaced.
//
// An Informer wraps a shared informer of namespaced objects so that objects of unselected namespaces are not kept:
// its transform replaces them with stubs carrying only their identity, and its handler never passes them on.
// When a namespace becomes selected, the full objects are listed from the API server and handed over.
package nsfilter

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	meshconfig "istio.io/api/mesh/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Filter tracks the namespaces selected by discoverySelectors. It is safe for concurrent use.
type Filter struct {
	informer cache.SharedIndexInformer
	reg      cache.ResourceEventHandlerRegistration
	log      *slog.Logger

	mu        sync.RWMutex
	selectors []labels.Selector // nil: every namespace is selected
	selected  map[string]bool   // with selectors: the selected namespaces

	// notifyMu serializes changes of the selection with the notifications about them, so that subscribers see
	// the changes in order.
	notifyMu sync.Mutex
	handlers map[int]func(added, removed []string)
	nextID   int

	started atomic.Bool
	synced  atomic.Bool
	syncErr error
}

// New returns a filter over the Namespaces of the cluster. selectors are the mesh config discoverySelectors;
// none means every namespace is selected. Start must be called before Selected means anything with selectors.
func New(client kubernetes.Interface, selectors []*meshconfig.LabelSelector, logger *slog.Logger) (*Filter, error) {
	sel, err := ConvertSelectors(selectors)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	inf := coreinformers.NewNamespaceInformer(client, 0, cache.Indexers{})
	f := &Filter{informer: inf, log: logger.With("component", "nsfilter"), selectors: sel, selected: map[string]bool{}}
	if err := inf.SetTransform(stripNamespace); err != nil {
		return nil, fmt.Errorf("namespace informer: %w", err)
	}
	f.reg, err = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { f.namespaceChanged(obj, false) },
		UpdateFunc: func(_, obj any) { f.namespaceChanged(obj, false) },
		DeleteFunc: func(obj any) { f.namespaceChanged(obj, true) },
	})
	if err != nil {
		return nil, fmt.Errorf("namespace informer: %w", err)
	}
	return f, nil
}

// ConvertSelectors turns mesh config label selectors into label selectors. An empty selector (no labels, no
// expressions) selects every namespace, as a Kubernetes label selector does.
func ConvertSelectors(in []*meshconfig.LabelSelector) ([]labels.Selector, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]labels.Selector, 0, len(in))
	for i, s := range in {
		ls := &metav1.LabelSelector{MatchLabels: s.GetMatchLabels()}
		for _, e := range s.GetMatchExpressions() {
			ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{
				Key: e.GetKey(), Operator: metav1.LabelSelectorOperator(e.GetOperator()), Values: e.GetValues(),
			})
		}
		sel, err := metav1.LabelSelectorAsSelector(ls)
		if err != nil {
			return nil, fmt.Errorf("meshConfig.discoverySelectors[%d]: %w", i, err)
		}
		out = append(out, sel)
	}
	return out, nil
}

// Everything returns a filter that selects every namespace and never changes, for tests and for callers that
// do not filter.
func Everything() *Filter {
	f := &Filter{selected: map[string]bool{}}
	f.started.Store(true)
	f.synced.Store(true)
	return f
}

// Start runs the namespace informer until ctx is done. It is idempotent: the controller and the config store
// share one filter and both start it.
func (f *Filter) Start(ctx context.Context) {
	if f.informer == nil || !f.started.CompareAndSwap(false, true) {
		return
	}
	go f.informer.RunWithContext(ctx)
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), f.reg.HasSynced) {
			f.synced.Store(true)
			f.mu.RLock()
			n, all := len(f.selected), f.selectors == nil
			f.mu.RUnlock()
			if all {
				f.log.Info("namespaces synced; no discovery selectors, every namespace is selected")
			} else {
				f.log.Info("namespaces synced", "selected", n)
			}
		}
	}()
}

// HasSynced reports whether the namespaces have been listed.
func (f *Filter) HasSynced() bool { return f.synced.Load() }

// WaitForSync waits until the namespaces have been listed or ctx is done, and reports which came first.
func (f *Filter) WaitForSync(ctx context.Context) bool {
	if f.HasSynced() {
		return true
	}
	return cache.WaitForCacheSync(ctx.Done(), f.HasSynced)
}

// Selected reports whether objects of the namespace are visible to meshd. Cluster-scoped objects (namespace "")
// always are.
func (f *Filter) Selected(namespace string) bool {
	if namespace == "" {
		return true
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.selectors == nil || f.selected[namespace]
}

// SelectedNamespaces returns the selected namespaces in order, or nil when every namespace is selected.
func (f *Filter) SelectedNamespaces() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.selectors == nil {
		return nil
	}
	out := make([]string, 0, len(f.selected))
	for ns := range f.selected {
		out = append(out, ns)
	}
	slices.Sort(out)
	return out
}

// Subscribe registers fn to be told, after the changes are in effect, which namespaces entered (added) and left
// (removed) the selection. Calls are serialized. The returned function cancels the subscription.
func (f *Filter) Subscribe(fn func(added, removed []string)) (cancel func()) {
	f.notifyMu.Lock()
	defer f.notifyMu.Unlock()
	if f.handlers == nil {
		f.handlers = map[int]func(added, removed []string){}
	}
	id := f.nextID
	f.nextID++
	f.handlers[id] = fn
	return func() {
		f.notifyMu.Lock()
		defer f.notifyMu.Unlock()
		delete(f.handlers, id)
	}
}

// SetSelectors replaces the discovery selectors (a mesh config reload) and re-evaluates every namespace.
func (f *Filter) SetSelectors(selectors []*meshconfig.LabelSelector) error {
	sel, err := ConvertSelectors(selectors)
	if err != nil {
		return err
	}
	if f.informer == nil {
		return fmt.Errorf("discovery selectors: this filter selects every namespace and cannot change")
	}
	f.notifyMu.Lock()
	defer f.notifyMu.Unlock()
	var known []*corev1.Namespace
	for _, o := range f.informer.GetStore().List() {
		if ns, ok := o.(*corev1.Namespace); ok {
			known = append(known, ns)
		}
	}
	f.mu.Lock()
	wasAll := f.selectors == nil
	before := f.selected
	f.selectors = sel
	f.selected = map[string]bool{}
	for _, ns := range known {
		if matches(sel, ns.Labels) {
			f.selected[ns.Name] = true
		}
	}
	f.mu.Unlock()
	var added, removed []string
	for _, ns := range known {
		was := wasAll || before[ns.Name]
		is := sel == nil || f.selected[ns.Name]
		switch {
		case is && !was:
			added = append(added, ns.Name)
		case was && !is:
			removed = append(removed, ns.Name)
		}
	}
	f.log.Info("discovery selectors changed", "selectors", len(sel), "added", added, "removed", removed)
	f.notifyLocked(added, removed)
	return nil
}

func matches(selectors []labels.Selector, l map[string]string) bool {
	if selectors == nil {
		return true
	}
	set := labels.Set(l)
	for _, s := range selectors {
		if s.Matches(set) {
			return true
		}
	}
	return false
}

func (f *Filter) namespaceChanged(obj any, deleted bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	f.notifyMu.Lock()
	defer f.notifyMu.Unlock()
	f.mu.Lock()
	if f.selectors == nil {
		f.mu.Unlock()
		return
	}
	was := f.selected[ns.Name]
	is := !deleted && matches(f.selectors, ns.Labels)
	if is {
		f.selected[ns.Name] = true
	} else {
		delete(f.selected, ns.Name)
	}
	f.mu.Unlock()
	if was == is || deleted || !f.synced.Load() {
		// A deleted namespace takes its objects with it; their own delete events remove them. Before the first
		// listing is complete nobody reads objects yet: consumers start their informers after it.
		return
	}
	if is {
		f.log.Info("namespace selected by discovery selectors", "namespace", ns.Name)
		f.notifyLocked([]string{ns.Name}, nil)
	} else {
		f.log.Info("namespace no longer selected by discovery selectors", "namespace", ns.Name)
		f.notifyLocked(nil, []string{ns.Name})
	}
}

func (f *Filter) notifyLocked(added, removed []string) {
	if len(added) == 0 && len(removed) == 0 {
		return
	}
	for _, id := range slices.Sorted(maps.Keys(f.handlers)) {
		f.handlers[id](added, removed)
	}
}

// stripNamespace keeps what the filter reads: name and labels.
func stripNamespace(obj any) (any, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns.Name, UID: ns.UID, ResourceVersion: ns.ResourceVersion, Labels: ns.Labels,
		DeletionTimestamp: ns.DeletionTimestamp,
	}}, nil
}
