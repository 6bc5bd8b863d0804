package nsfilter

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// StubAnnotation marks the stand-in an Informer keeps for an object of an unselected namespace.
const StubAnnotation = "nsfilter.meshd.io/stub"

// IsStub reports whether obj is a stand-in for an object of an unselected namespace.
func IsStub(obj metav1.Object) bool {
	_, ok := obj.GetAnnotations()[StubAnnotation]
	return ok
}

// Handler receives the objects of selected namespaces. The calls of one Informer are serialized; objects must
// not be modified.
type Handler struct {
	// Upsert is called with an object of a selected namespace that is new or may have changed.
	Upsert func(obj runtime.Object)
	// Delete is called when the object is gone or its namespace is not selected; it may name an object the
	// handler does not have.
	Delete func(namespace, name string)
	// DropNamespace is called when a namespace leaves the selection: every object of it is to be forgotten.
	DropNamespace func(namespace string)
}

// InformerOptions configure an Informer.
type InformerOptions struct {
	// Kind names the objects in log lines, e.g. "Pod".
	Kind string
	// Informer is a shared informer of namespaced objects, not yet started, over all namespaces. The Informer
	// sets its transform and adds its handler.
	Informer cache.SharedIndexInformer
	Filter   *Filter
	// List lists the objects of one namespace from the API server (a *List object); it is used when a namespace
	// becomes selected, because the informer only kept stubs of them.
	List func(ctx context.Context, namespace string) (runtime.Object, error)
	// Strip, optional, returns the part of an object of a selected namespace that is worth keeping. It must not
	// modify its argument and must be idempotent.
	Strip   func(obj runtime.Object) runtime.Object
	Handler Handler
	Logger  *slog.Logger
}

// Informer feeds a Handler with the objects of the selected namespaces.
type Informer struct {
	kind   string
	inf    cache.SharedIndexInformer
	reg    cache.ResourceEventHandlerRegistration
	filter *Filter
	list   func(ctx context.Context, namespace string) (runtime.Object, error)
	strip  func(obj runtime.Object) runtime.Object
	h      Handler
	log    *slog.Logger
	queue  workqueue.TypedRateLimitingInterface[string]

	unsubscribe func()

	// mu serializes the calls to the handler, and guards fetching.
	mu sync.Mutex
	// fetching are the namespace listings in flight. Every event delivered meanwhile marks its object touched:
	// the event is at least as new as the listing's view, so the listing must not overwrite it.
	fetching map[*fetch]struct{}
}

type fetch struct {
	namespace string
	touched   map[string]bool // names
}

// NewInformer sets up the transform and handler of opts.Informer. Run it with Run.
func NewInformer(opts InformerOptions) (*Informer, error) {
	if opts.Informer == nil || opts.Filter == nil || opts.List == nil || opts.Handler.Upsert == nil ||
		opts.Handler.Delete == nil || opts.Handler.DropNamespace == nil {
		return nil, fmt.Errorf("nsfilter: informer of %s: informer, filter, list and every handler function are required", opts.Kind)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	i := &Informer{
		kind:     opts.Kind,
		inf:      opts.Informer,
		filter:   opts.Filter,
		list:     opts.List,
		strip:    opts.Strip,
		h:        opts.Handler,
		log:      opts.Logger.With("kind", opts.Kind),
		queue:    workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		fetching: map[*fetch]struct{}{},
	}
	if err := i.inf.SetTransform(i.transform); err != nil {
		return nil, fmt.Errorf("informer of %s: %w", opts.Kind, err)
	}
	reg, err := i.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { i.event(obj, false) },
		UpdateFunc: func(_, obj any) { i.event(obj, false) },
		DeleteFunc: func(obj any) { i.event(obj, true) },
	})
	if err != nil {
		return nil, fmt.Errorf("informer of %s: %w", opts.Kind, err)
	}
	i.reg = reg
	i.unsubscribe = opts.Filter.Subscribe(i.selectionChanged)
	return i, nil
}

// Run runs the informer and the namespace listings until ctx is done; then it stops following the filter. An
// Informer runs once.
func (i *Informer) Run(ctx context.Context) {
	defer i.unsubscribe()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		i.queue.ShutDown()
	}()
	go func() {
		defer wg.Done()
		i.work(ctx)
	}()
	i.inf.RunWithContext(ctx)
	wg.Wait()
}

// HasSynced reports whether the handler has been given every object of the initial listing.
func (i *Informer) HasSynced() bool { return i.reg.HasSynced() }

// Store is the informer's cache: stubs for unselected namespaces, stripped objects for selected ones.
func (i *Informer) Store() cache.Store { return i.inf.GetStore() }

func (i *Informer) transform(obj any) (any, error) {
	ro, ok := obj.(runtime.Object)
	if !ok {
		return obj, nil
	}
	m, err := meta.Accessor(ro)
	if err != nil || IsStub(m) {
		return obj, nil
	}
	if !i.filter.Selected(m.GetNamespace()) {
		return stubOf(ro, m), nil
	}
	if i.strip != nil {
		return i.strip(ro), nil
	}
	return obj, nil
}

// stubOf returns an object of the same type as obj with only its identity.
func stubOf(obj runtime.Object, m metav1.Object) runtime.Object {
	t := reflect.TypeOf(obj)
	if t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return obj
	}
	stub, ok := reflect.New(t.Elem()).Interface().(runtime.Object)
	if !ok {
		return obj
	}
	sm, err := meta.Accessor(stub)
	if err != nil {
		return obj
	}
	sm.SetName(m.GetName())
	sm.SetNamespace(m.GetNamespace())
	sm.SetUID(m.GetUID())
	sm.SetResourceVersion(m.GetResourceVersion())
	sm.SetAnnotations(map[string]string{StubAnnotation: ""})
	return stub
}

func (i *Informer) event(obj any, deleted bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj, deleted = t.Obj, true
	}
	ro, ok := obj.(runtime.Object)
	if !ok {
		return
	}
	m, err := meta.Accessor(ro)
	if err != nil {
		return
	}
	ns, name := m.GetNamespace(), m.GetName()
	i.mu.Lock()
	defer i.mu.Unlock()
	for f := range i.fetching {
		if f.namespace == ns {
			f.touched[name] = true
		}
	}
	switch {
	case deleted, !i.filter.Selected(ns):
		i.h.Delete(ns, name)
	case IsStub(m):
		// Transformed while its namespace was not selected, delivered after it became so: the listing of the
		// namespace brings the object.
		i.queue.Add(ns)
	default:
		i.h.Upsert(ro)
	}
}

func (i *Informer) selectionChanged(added, removed []string) {
	for _, ns := range added {
		i.queue.Add(ns)
	}
	if len(removed) == 0 {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	for _, ns := range removed {
		i.h.DropNamespace(ns)
	}
}

func (i *Informer) work(ctx context.Context) {
	for {
		ns, shutdown := i.queue.Get()
		if shutdown {
			return
		}
		err := i.fetch(ctx, ns)
		switch {
		case err == nil:
			i.queue.Forget(ns)
		case ctx.Err() != nil:
		default:
			i.log.Warn("nsfilter: cannot list the objects of a newly selected namespace, retrying", "namespace", ns,
				"error", err, "retries", i.queue.NumRequeues(ns))
			i.queue.AddRateLimited(ns)
		}
		i.queue.Done(ns)
	}
}

// fetch lists the objects of a selected namespace and hands over those no event has touched meanwhile.
func (i *Informer) fetch(ctx context.Context, ns string) error {
	if !i.filter.Selected(ns) {
		return nil
	}
	f := &fetch{namespace: ns, touched: map[string]bool{}}
	i.mu.Lock()
	i.fetching[f] = struct{}{}
	i.mu.Unlock()
	defer func() {
		i.mu.Lock()
		delete(i.fetching, f)
		i.mu.Unlock()
	}()
	list, err := i.list(ctx, ns)
	if err != nil {
		return fmt.Errorf("listing %s in namespace %s: %w", i.kind, ns, err)
	}
	items, err := meta.ExtractList(list)
	if err != nil {
		return fmt.Errorf("listing %s in namespace %s: %w", i.kind, ns, err)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.filter.Selected(ns) {
		return nil // left the selection meanwhile; DropNamespace has run
	}
	n := 0
	for _, o := range items {
		m, err := meta.Accessor(o)
		if err != nil || f.touched[m.GetName()] {
			continue
		}
		if m.GetNamespace() == "" {
			m.SetNamespace(ns)
		}
		if i.strip != nil {
			o = i.strip(o)
		}
		i.h.Upsert(o)
		n++
	}
	i.log.Debug("nsfilter: listed newly selected namespace", "namespace", ns, "objects", n)
	return nil
}
