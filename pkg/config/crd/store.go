// Package crd is the Istio configuration store over the Kubernetes API: VirtualServices, DestinationRules,
// Gateways, ServiceEntries, WorkloadEntries, Sidecars, PeerAuthentications and AuthorizationPolicies, read with
// the typed informers of istio.io/client-go.
//
// Each kind is read at the best version the API server serves (networking.istio.io v1, else v1beta1, else
// v1alpha3; security.istio.io v1, else v1beta1), found with the discovery client. A kind whose CRD is not
// installed is skipped, with one log line, and watched as soon as it is installed: the store follows the
// CustomResourceDefinitions (metadata only) and asks discovery again when an Istio one changes, and also
// periodically. A kind whose CRD is removed is dropped.
//
// Objects are validated like files are: CRD schemas are loose, so an invalid object is rejected (one log line
// naming it, pilot_total_rejected_configs counted) and the previous valid version of the object, if any, keeps
// being served. Objects of namespaces the discovery selectors do not select are not kept.
package crd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"

	"github.com/meshd/meshd/pkg/config"
	"github.com/meshd/meshd/pkg/config/validation"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/serviceregistry/kube/nsfilter"
)

// Source is the Config.Source of objects read from the Kubernetes API.
const Source = "kube"

// CRDResource is the resource the store follows to notice Istio CRDs being installed or removed.
var CRDResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// DefaultRecheckInterval is how often discovery is asked again which kinds are served.
const DefaultRecheckInterval = 30 * time.Second

// Options configure a Store.
type Options struct {
	// Filter applies the discovery selectors; nil selects every namespace. The store starts it.
	Filter *nsfilter.Filter
	// OnChange, optional, receives a full push request (reason config, the object's key) after every change of
	// the served config, once the store has synced.
	OnChange func(*model.PushRequest)
	// Discovery answers which versions of the Istio groups are served; the Istio client's when nil.
	Discovery discovery.DiscoveryInterface
	// CRDs, optional, is used to watch CustomResourceDefinitions (metadata only), so that an Istio CRD installed
	// later is picked up at once rather than at the next periodic check.
	CRDs metadata.Interface
	// RecheckInterval is how often discovery is asked again; DefaultRecheckInterval when zero.
	RecheckInterval time.Duration
	// Kinds restricts the kinds read; all eight when empty.
	Kinds  []model.Kind
	Logger *slog.Logger
}

// Store serves the Istio configuration objects of the cluster. It implements model.ConfigStore.
type Store struct {
	client   versioned.Interface
	disco    discovery.DiscoveryInterface
	crds     metadata.Interface
	filter   *nsfilter.Filter
	onChange func(*model.PushRequest)
	interval time.Duration
	log      *slog.Logger
	recheck  chan struct{}

	mu       sync.Mutex
	kinds    map[model.Kind]*kindState
	order    []model.Kind
	accepted map[model.ConfigKey]*model.Config
	// rejected holds the resource version last rejected per object, so a version is reported once.
	rejected map[model.ConfigKey]string
	// discoErr is the last discovery error reported, so an error streak is logged once.
	discoErr string

	snap    atomic.Pointer[model.StaticConfigStore]
	synced  atomic.Bool
	started atomic.Bool
	wg      sync.WaitGroup
	done    chan struct{}
}

var _ model.ConfigStore = (*Store)(nil)

// kindState is what the store does with one kind.
type kindState struct {
	info *kindInfo
	// version is the version watched; empty when the kind is not watched.
	version string
	// gen tells the handlers of a stopped informer from those of the current one.
	gen      int
	informer *nsfilter.Informer
	cancel   context.CancelFunc
	// missingLogged is set once "not installed" has been logged, until the kind is watched again.
	missingLogged bool
}

// New returns a store reading with client. Start starts it.
func New(client versioned.Interface, opts Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("crd store: no Istio client")
	}
	if opts.Discovery == nil {
		opts.Discovery = client.Discovery()
	}
	if opts.Filter == nil {
		opts.Filter = nsfilter.Everything()
	}
	if opts.RecheckInterval <= 0 {
		opts.RecheckInterval = DefaultRecheckInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Store{
		client:   client,
		disco:    opts.Discovery,
		crds:     opts.CRDs,
		filter:   opts.Filter,
		onChange: opts.OnChange,
		interval: opts.RecheckInterval,
		log:      opts.Logger.With("component", "crd-store"),
		recheck:  make(chan struct{}, 1),
		kinds:    map[model.Kind]*kindState{},
		accepted: map[model.ConfigKey]*model.Config{},
		rejected: map[model.ConfigKey]string{},
		done:     make(chan struct{}),
	}
	want := opts.Kinds
	if len(want) == 0 {
		for _, k := range kinds {
			want = append(want, k.kind)
		}
	}
	for _, k := range want {
		info := kindInfoOf(k)
		if info == nil {
			return nil, fmt.Errorf("crd store: kind %q is not an Istio kind meshd reads", k)
		}
		if _, dup := s.kinds[k]; !dup {
			s.kinds[k] = &kindState{info: info}
			s.order = append(s.order, k)
		}
	}
	s.snap.Store(model.NewStaticConfigStore(nil))
	return s, nil
}

// Start starts the namespace filter and, once it has synced, the discovery of served kinds and their
// informers. Everything stops when ctx is done; then Done is closed.
func (s *Store) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("crd store: already started")
	}
	s.filter.Start(ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.loop(ctx)
	}()
	go func() {
		<-ctx.Done()
		s.wg.Wait()
		close(s.done)
	}()
	return nil
}

// Done is closed when everything Start started has stopped.
func (s *Store) Done() <-chan struct{} { return s.done }

// HasSynced reports whether discovery has answered for every Istio group, the informers of the kinds served
// then have delivered their initial listing, and the first snapshot is published. Kinds installed later do not
// hold it back.
func (s *Store) HasSynced() bool { return s.synced.Load() }

// List returns the configs of a kind in the current snapshot, sorted by namespace and name.
func (s *Store) List(kind model.Kind) []*model.Config { return s.snap.Load().List(kind) }

// Snapshot returns the current configs: one consistent view.
func (s *Store) Snapshot() *model.StaticConfigStore { return s.snap.Load() }

// Watched returns the version watched per kind ("" for kinds not served), for debug output.
func (s *Store) Watched() map[model.Kind]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[model.Kind]string, len(s.kinds))
	for k, st := range s.kinds {
		out[k] = st.version
	}
	return out
}

func (s *Store) signal() {
	select {
	case s.recheck <- struct{}{}:
	default:
	}
}

func (s *Store) loop(ctx context.Context) {
	if !s.filter.WaitForSync(ctx) {
		return
	}
	if s.crds != nil {
		s.watchCRDs(ctx)
	}
	ticker := time.NewTicker(s.interval)
	defer ticker.Stop()
	initial := false
	retry := time.NewTimer(0)
	defer retry.Stop()
	<-retry.C
	for {
		complete := s.reconcile(ctx)
		if complete && !initial {
			initial = true
			s.waitInitialSync(ctx)
		}
		if !complete && !initial {
			// Not synced yet: do not wait a whole interval for the next try.
			retry.Reset(time.Second)
		}
		select {
		case <-ctx.Done():
			s.stopAll()
			return
		case <-s.recheck:
		case <-ticker.C:
		case <-retry.C:
		}
	}
}

// waitInitialSync publishes the first snapshot, in the background, once every informer started (and not
// stopped since) has synced.
func (s *Store) waitInitialSync(ctx context.Context) {
	allSynced := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, st := range s.kinds {
			if st.version != "" && (st.informer == nil || !st.informer.HasSynced()) {
				return false
			}
		}
		return true
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if !cache.WaitForCacheSync(ctx.Done(), allSynced) {
			return
		}
		s.mu.Lock()
		s.publishLocked()
		s.synced.Store(true)
		n := len(s.accepted)
		s.mu.Unlock()
		s.log.Info("crd store synced", "configs", n, "watched", s.Watched())
		if s.onChange != nil {
			s.onChange(model.NewPushRequest(true, model.ReasonConfigUpdate))
		}
	}()
}

func (s *Store) watchCRDs(ctx context.Context) {
	inf := metadatainformer.NewFilteredMetadataInformer(s.crds, CRDResource, metav1.NamespaceAll, 0, cache.Indexers{}, nil).Informer()
	_ = inf.SetTransform(func(obj any) (any, error) {
		if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
			return &metav1.PartialObjectMetadata{TypeMeta: m.TypeMeta, ObjectMeta: metav1.ObjectMeta{
				Name: m.Name, UID: m.UID, ResourceVersion: m.ResourceVersion, Generation: m.Generation,
			}}, nil
		}
		return obj, nil
	})
	onCRD := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		m, err := meta.Accessor(obj)
		if err != nil {
			return
		}
		if strings.HasSuffix(m.GetName(), "."+GroupNetworking) || strings.HasSuffix(m.GetName(), "."+GroupSecurity) {
			s.signal()
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onCRD,
		UpdateFunc: func(_, obj any) { onCRD(obj) },
		DeleteFunc: onCRD,
	}); err != nil {
		s.log.Warn("crd store: cannot watch CustomResourceDefinitions; relying on periodic discovery", "error", err,
			"interval", s.interval)
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		inf.RunWithContext(ctx)
	}()
}

// reconcile asks discovery which kinds are served and starts or stops their informers. It reports whether
// discovery answered for every group version.
func (s *Store) reconcile(ctx context.Context) bool {
	served := map[string]map[string]bool{} // group/version -> resources
	failed := map[string]bool{}
	var errs []string
	for _, gv := range s.groupVersions() {
		list, err := s.disco.ServerResourcesForGroupVersion(gv)
		switch {
		case apierrors.IsNotFound(err):
			served[gv] = map[string]bool{}
		case err != nil:
			failed[gv] = true
			errs = append(errs, fmt.Sprintf("%s: %v", gv, err))
		default:
			res := map[string]bool{}
			for _, r := range list.APIResources {
				res[r.Name] = true
			}
			served[gv] = res
		}
	}
	var starts []pendingStart
	s.apply(func() []model.ConfigKey {
		removed, st := s.reconcileLocked(served, failed, errs)
		starts = st
		return removed
	})
	// Informers are created outside the lock: creating one subscribes to the namespace filter, whose
	// notifications call into the store.
	for _, st := range starts {
		s.start(ctx, st)
	}
	return len(failed) == 0
}

// pendingStart is a kind to start watching at a version; gen is the generation reserved for it.
type pendingStart struct {
	st      *kindState
	version string
	gen     int
}

func (s *Store) reconcileLocked(served map[string]map[string]bool, failed map[string]bool, errs []string) ([]model.ConfigKey, []pendingStart) {
	if msg := strings.Join(errs, "; "); msg != s.discoErr {
		if msg != "" {
			s.log.Warn("crd store: cannot tell which Istio kinds are served; will retry", "error", msg)
		} else if s.discoErr != "" {
			s.log.Info("crd store: discovery answers again")
		}
		s.discoErr = msg
	}
	var removed []model.ConfigKey
	var starts []pendingStart
	for _, k := range s.order {
		st := s.kinds[k]
		best, unknown := "", false
		for _, v := range st.info.versions {
			gv := st.info.group + "/" + v.name
			if failed[gv] {
				unknown = true // a preferred version may be served: do not decide on the ones after it
				break
			}
			if served[gv][st.info.resource] {
				best = v.name
				break
			}
		}
		switch {
		case unknown:
		case best == "" && st.version == "":
			if !st.missingLogged {
				st.missingLogged = true
				s.log.Info("Istio CRD not installed; skipping the kind until it is", "kind", k, "crd", st.info.crdName(),
					"versions", st.info.versionNames())
			}
		case best == "":
			s.log.Warn("Istio CRD no longer served; dropping its objects", "kind", k, "crd", st.info.crdName(), "version", st.version)
			removed = append(removed, s.stopLocked(st)...)
			st.missingLogged = true
		case st.version == "":
			starts = append(starts, s.reserveLocked(st, best))
		case st.version != best && !served[st.info.group+"/"+st.version][st.info.resource]:
			// The version watched is gone but another is served: switch.
			s.log.Info("Istio CRD version changed", "kind", k, "from", st.version, "to", best)
			removed = append(removed, s.stopLocked(st)...)
			starts = append(starts, s.reserveLocked(st, best))
		}
	}
	return removed, starts
}

// reserveLocked marks a kind as watched at a version, under a new generation, before its informer exists.
func (s *Store) reserveLocked(st *kindState, version string) pendingStart {
	st.gen++
	st.version, st.informer, st.cancel, st.missingLogged = version, nil, nil, false
	return pendingStart{st: st, version: version, gen: st.gen}
}

func (k *kindInfo) versionNames() []string {
	out := make([]string, len(k.versions))
	for i, v := range k.versions {
		out[i] = k.group + "/" + v.name
	}
	return out
}

func (s *Store) groupVersions() []string {
	var out []string
	for _, k := range s.order {
		info := s.kinds[k].info
		for _, v := range info.versions {
			if gv := info.group + "/" + v.name; !slices.Contains(out, gv) {
				out = append(out, gv)
			}
		}
	}
	return out
}

// start creates and runs the informer reserved by reserveLocked, unless the kind changed meanwhile.
func (s *Store) start(ctx context.Context, sv pendingStart) {
	st, kind, gen := sv.st, sv.st.info.kind, sv.gen
	ver := st.info.versions[0]
	for _, x := range st.info.versions {
		if x.name == sv.version {
			ver = x
		}
	}
	inf, err := nsfilter.NewInformer(nsfilter.InformerOptions{
		Kind:     string(kind),
		Informer: ver.informer(s.client),
		Filter:   s.filter,
		List: func(ctx context.Context, ns string) (runtime.Object, error) {
			return ver.list(ctx, s.client, ns)
		},
		Strip: stripIstio,
		Handler: nsfilter.Handler{
			Upsert:        func(obj runtime.Object) { s.upsert(kind, gen, obj) },
			Delete:        func(ns, name string) { s.remove(kind, gen, ns, name) },
			DropNamespace: func(ns string) { s.dropNamespace(kind, gen, ns) },
		},
		Logger: s.log,
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.log.Error("crd store: cannot watch kind", "kind", kind, "version", sv.version, "error", err)
		if st.gen == gen {
			st.version = ""
		}
		return
	}
	kctx, cancel := context.WithCancel(ctx)
	if st.gen != gen {
		cancel() // superseded: run it only to release its subscription
	} else {
		st.informer, st.cancel = inf, cancel
		s.log.Info("watching Istio kind", "kind", kind, "version", st.info.group+"/"+sv.version)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		inf.Run(kctx)
	}()
}

// stopLocked stops the informer of a kind and forgets its objects, returning their keys.
func (s *Store) stopLocked(st *kindState) []model.ConfigKey {
	if st.cancel != nil {
		st.cancel()
	}
	st.gen++
	st.version, st.informer, st.cancel = "", nil, nil
	var keys []model.ConfigKey
	for k := range s.accepted {
		if k.Kind == st.info.kind {
			keys = append(keys, k)
			delete(s.accepted, k)
		}
	}
	for k := range s.rejected {
		if k.Kind == st.info.kind {
			delete(s.rejected, k)
		}
	}
	return keys
}

func (s *Store) stopAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.kinds {
		if st.cancel != nil {
			st.cancel()
		}
	}
}

// current reports whether handlers of generation gen of a kind may still change the store. Called with mu held.
func (s *Store) current(kind model.Kind, gen int) bool {
	st := s.kinds[kind]
	return st != nil && st.gen == gen
}

func (s *Store) upsert(kind model.Kind, gen int, obj runtime.Object) {
	cfg, err := convert(kind, obj)
	if err != nil {
		s.log.Error("crd store: cannot convert object", "kind", kind, "error", err)
		return
	}
	verr := validation.Validate(cfg)
	k := cfg.Key()
	s.apply(func() []model.ConfigKey {
		if !s.current(kind, gen) {
			return nil
		}
		if verr != nil {
			if rv, seen := s.rejected[k]; seen && rv != "" && rv == cfg.ResourceVersion {
				return nil // this version was reported already (a relist)
			}
			s.rejected[k] = cfg.ResourceVersion
			_, kept := s.accepted[k]
			config.RecordRejected(string(kind))
			s.log.Warn("crd store: rejected invalid object", "kind", kind, "namespace", cfg.Namespace, "name", cfg.Name,
				"resourceVersion", cfg.ResourceVersion, "error", verr, "keptPrevious", kept)
			return nil
		}
		delete(s.rejected, k)
		if prev := s.accepted[k]; prev != nil && sameConfig(prev, cfg) {
			return nil
		}
		s.accepted[k] = cfg
		return []model.ConfigKey{k}
	})
}

func (s *Store) remove(kind model.Kind, gen int, ns, name string) {
	k := model.ConfigKey{Kind: kind, Namespace: ns, Name: name}
	s.apply(func() []model.ConfigKey {
		if !s.current(kind, gen) {
			return nil
		}
		delete(s.rejected, k)
		if _, ok := s.accepted[k]; !ok {
			return nil
		}
		delete(s.accepted, k)
		return []model.ConfigKey{k}
	})
}

func (s *Store) dropNamespace(kind model.Kind, gen int, ns string) {
	s.apply(func() []model.ConfigKey {
		if !s.current(kind, gen) {
			return nil
		}
		var keys []model.ConfigKey
		for k := range s.accepted {
			if k.Kind == kind && k.Namespace == ns {
				keys = append(keys, k)
				delete(s.accepted, k)
			}
		}
		for k := range s.rejected {
			if k.Kind == kind && k.Namespace == ns {
				delete(s.rejected, k)
			}
		}
		return keys
	})
}

// apply runs a change under the lock; when it changed objects (returned their keys) and the store has synced,
// a new snapshot is published and the change reported, outside the lock. Before the store has synced, the first
// snapshot is published when the initial informers have synced.
func (s *Store) apply(change func() []model.ConfigKey) {
	s.mu.Lock()
	keys := change()
	var req *model.PushRequest
	if len(keys) > 0 && s.synced.Load() {
		s.publishLocked()
		req = model.NewPushRequest(true, model.ReasonConfigUpdate, keys...)
	}
	s.mu.Unlock()
	if req != nil && s.onChange != nil {
		s.onChange(req)
	}
}

func (s *Store) publishLocked() {
	all := slices.Collect(maps.Values(s.accepted))
	slices.SortFunc(all, func(a, b *model.Config) int {
		return strings.Compare(string(a.Kind)+"/"+a.Namespace+"/"+a.Name, string(b.Kind)+"/"+b.Namespace+"/"+b.Name)
	})
	s.snap.Store(model.NewStaticConfigStore(all))
}

// convert turns an Istio object of a generated client-go type into a config with a deep copy of its spec.
func convert(kind model.Kind, obj runtime.Object) (*model.Config, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", kind, err)
	}
	spec, err := specOf(obj)
	if err != nil {
		return nil, fmt.Errorf("%s %s/%s: %w", kind, m.GetNamespace(), m.GetName(), err)
	}
	return &model.Config{
		Kind:              kind,
		Name:              m.GetName(),
		Namespace:         m.GetNamespace(),
		Labels:            maps.Clone(m.GetLabels()),
		Annotations:       maps.Clone(m.GetAnnotations()),
		ResourceVersion:   m.GetResourceVersion(),
		CreationTimestamp: m.GetCreationTimestamp().Time,
		Source:            Source,
		Spec:              proto.Clone(spec),
	}, nil
}

// specOf returns a pointer to the Spec field of a generated Istio type: a message of istio.io/api.
func specOf(obj runtime.Object) (proto.Message, error) {
	v := reflect.ValueOf(obj)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("unexpected type %T", obj)
	}
	f := v.Elem().FieldByName("Spec")
	if !f.IsValid() || !f.CanAddr() {
		return nil, fmt.Errorf("type %T has no spec", obj)
	}
	msg, ok := f.Addr().Interface().(proto.Message)
	if !ok {
		return nil, fmt.Errorf("the spec of %T is not a protobuf message", obj)
	}
	return msg, nil
}

// stripIstio drops what the store does not serve: managed fields, status and the last-applied annotation (a
// second copy of the spec). It returns a copy: informer objects are never modified in place.
func stripIstio(obj runtime.Object) runtime.Object {
	out := obj.DeepCopyObject()
	m, err := meta.Accessor(out)
	if err != nil {
		return obj
	}
	m.SetManagedFields(nil)
	if a := m.GetAnnotations(); a[lastApplied] != "" {
		a = maps.Clone(a)
		delete(a, lastApplied)
		m.SetAnnotations(a)
	}
	if v := reflect.ValueOf(out); v.Kind() == reflect.Pointer && v.Elem().Kind() == reflect.Struct {
		if st := v.Elem().FieldByName("Status"); st.IsValid() && st.CanSet() {
			st.Set(reflect.Zero(st.Type()))
		}
	}
	return out
}

const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

func sameConfig(a, b *model.Config) bool {
	return proto.Equal(a.Spec, b.Spec) && maps.Equal(a.Labels, b.Labels) && maps.Equal(a.Annotations, b.Annotations) &&
		a.ResourceVersion == b.ResourceVersion && a.CreationTimestamp.Equal(b.CreationTimestamp)
}
