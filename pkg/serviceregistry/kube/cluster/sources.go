// Package cluster puts together what meshd reads from one Kubernetes cluster: the service registry
// (kube.Controller) and the Istio config store (crd.Store), sharing one namespace filter, behind the one object
// bootstrap hands to the push context as both env.ServiceDiscovery and env.ConfigStore.
//
// ServiceEntries and WorkloadEntries are config, but they also define services, endpoints and workloads; they are
// merged into the registry view here, as the file source does: ServiceEntry hosts become services with their
// endpoints (inline, or the pods and WorkloadEntries their workloadSelector picks), WorkloadEntries become
// workloads, and Kubernetes services also select the WorkloadEntries of their namespace.
package cluster

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"

	meshconfig "istio.io/api/mesh/v1alpha1"
	"istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/pkg/config/crd"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/serviceregistry/kube"
	"github.com/meshd/meshd/pkg/serviceregistry/kube/nsfilter"
	"github.com/meshd/meshd/pkg/serviceregistry/serviceentry"
)

// Options configure New.
type Options struct {
	DomainSuffix string
	ClusterID    string
	// DiscoverySelectors are the mesh config discoverySelectors, applied to registry and config alike.
	DiscoverySelectors []*meshconfig.LabelSelector
	// OnChange, optional, receives every push request of either source, completed with what the merge of
	// ServiceEntries and WorkloadEntries changed, after the merged snapshot is visible.
	OnChange func(*model.PushRequest)
	// Store configures the config store (Discovery, CRDs, RecheckInterval, Kinds); its Filter, OnChange and
	// Logger are set here.
	Store  crd.Options
	Logger *slog.Logger
}

// Sources is the registry and config of one cluster. It implements model.ServiceDiscovery, model.ConfigStore
// and model.Snapshotter.
type Sources struct {
	ctrl     *kube.Controller
	store    *crd.Store
	filter   *nsfilter.Filter
	onChange func(*model.PushRequest)
	log      *slog.Logger

	mu      sync.Mutex // serializes merges
	snap    atomic.Pointer[merged]
	synced  atomic.Bool
	started atomic.Bool
	done    chan struct{}
}

var (
	_ model.ServiceDiscovery = (*Sources)(nil)
	_ model.ConfigStore      = (*Sources)(nil)
	_ model.Snapshotter      = (*Sources)(nil)
)

// merged is one consistent view of both sources.
type merged struct {
	disc  *model.StaticDiscovery
	store *model.StaticConfigStore
	// What the merge added, to report its changes: services from ServiceEntries (by namespace and hostname)
	// and endpoints by hostname (of ServiceEntries, and WorkloadEntries selected by Kubernetes services).
	services  map[[2]string][]*model.Service
	endpoints map[string][]*model.Endpoint
	hostNS    map[string]string
}

// New returns the sources of the cluster behind kubeClient and istioClient. Start starts them.
func New(kubeClient kubernetes.Interface, istioClient versioned.Interface, opts Options) (*Sources, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	filter, err := nsfilter.New(kubeClient, opts.DiscoverySelectors, opts.Logger)
	if err != nil {
		return nil, err
	}
	s := &Sources{filter: filter, onChange: opts.OnChange, log: opts.Logger.With("component", "cluster-sources"), done: make(chan struct{})}
	s.ctrl, err = kube.NewController(kubeClient, kube.Options{
		DomainSuffix: opts.DomainSuffix, ClusterID: opts.ClusterID, Filter: filter, OnPublish: s.changed, Logger: opts.Logger,
	})
	if err != nil {
		return nil, err
	}
	so := opts.Store
	so.Filter, so.OnChange, so.Logger = filter, s.changed, opts.Logger
	s.store, err = crd.New(istioClient, so)
	if err != nil {
		return nil, err
	}
	s.snap.Store(emptyMerged())
	return s, nil
}

func emptyMerged() *merged {
	return &merged{disc: model.NewStaticDiscovery(nil, nil, nil), store: model.NewStaticConfigStore(nil)}
}

// Controller is the service registry.
func (s *Sources) Controller() *kube.Controller { return s.ctrl }

// Store is the config store.
func (s *Sources) Store() *crd.Store { return s.store }

// Filter is the namespace filter both apply; SetSelectors on it follows a mesh config change.
func (s *Sources) Filter() *nsfilter.Filter { return s.filter }

// Start starts both sources; they stop when ctx is done, and then Done is closed.
func (s *Sources) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("cluster sources: already started")
	}
	if err := s.ctrl.Start(ctx); err != nil {
		return err
	}
	if err := s.store.Start(ctx); err != nil {
		return err
	}
	go func() {
		<-s.ctrl.Done()
		<-s.store.Done()
		close(s.done)
	}()
	return nil
}

// Done is closed when both sources have stopped.
func (s *Sources) Done() <-chan struct{} { return s.done }

// HasSynced reports whether both sources have synced and a merged snapshot of both is published.
func (s *Sources) HasSynced() bool { return s.synced.Load() }

func (s *Sources) Services() []*model.Service { return s.snap.Load().disc.Services() }
func (s *Sources) Endpoints(hostname string) []*model.Endpoint {
	return s.snap.Load().disc.Endpoints(hostname)
}
func (s *Sources) Workloads() []*model.Workload         { return s.snap.Load().disc.Workloads() }
func (s *Sources) List(kind model.Kind) []*model.Config { return s.snap.Load().store.List(kind) }

// Snapshot returns the merged registry and the config it was built with: one consistent view.
func (s *Sources) Snapshot() (*model.StaticDiscovery, *model.StaticConfigStore) {
	m := s.snap.Load()
	return m.disc, m.store
}

// changed receives the requests of both sources (nil from the registry when its snapshot changed without
// needing a push): it merges their latest snapshots and forwards the request, completed with what the merge
// changed, if there is anything to push.
func (s *Sources) changed(req *model.PushRequest) {
	s.mu.Lock()
	bothSynced := s.ctrl.HasSynced() && s.store.HasSynced()
	disc, _ := s.ctrl.Snapshot()
	next := merge(disc, s.store.Snapshot())
	prev := s.snap.Swap(next)
	req = req.Merge(diff(prev, next))
	first := bothSynced && !s.synced.Load()
	if first {
		s.synced.Store(true)
	}
	s.mu.Unlock()
	if first {
		s.log.Info("cluster sources synced", "services", len(next.disc.Services()), "workloads", len(next.disc.Workloads()))
	}
	if req != nil && s.onChange != nil {
		s.onChange(req)
	}
}

// merge builds the registry view of a registry snapshot and a config snapshot.
func merge(kd *model.StaticDiscovery, cs *model.StaticConfigStore) *merged {
	m := &merged{store: cs, services: map[[2]string][]*model.Service{}, endpoints: map[string][]*model.Endpoint{}, hostNS: map[string]string{}}
	entries, workloadEntries := cs.List(model.KindServiceEntry), cs.List(model.KindWorkloadEntry)
	if len(entries) == 0 && len(workloadEntries) == 0 {
		m.disc = kd
		return m
	}
	var weWorkloads []*model.Workload
	weByNS := map[string][]*model.Workload{}
	for _, cfg := range workloadEntries {
		if w := serviceentry.ConvertWorkloadEntry(cfg); w != nil {
			weWorkloads = append(weWorkloads, w)
			weByNS[w.Namespace] = append(weByNS[w.Namespace], w)
		}
	}
	workloads := append(slices.Clone(kd.Workloads()), weWorkloads...)
	slices.SortFunc(workloads, func(a, b *model.Workload) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Kind, b.Kind))
	})
	byNS := map[string][]*model.Workload{}
	for _, w := range workloads {
		byNS[w.Namespace] = append(byNS[w.Namespace], w)
	}

	services := slices.Clone(kd.Services())
	var endpoints []*model.Endpoint
	for _, svc := range kd.Services() {
		endpoints = append(endpoints, kd.Endpoints(svc.Hostname)...)
		if svc.Selector != nil && svc.ExternalName == "" && len(weByNS[svc.Namespace]) > 0 {
			if eps := kube.EndpointsFromPods(svc, weByNS[svc.Namespace]); len(eps) > 0 {
				m.endpoints[svc.Hostname] = append(m.endpoints[svc.Hostname], eps...)
				m.hostNS[svc.Hostname] = svc.Namespace
			}
		}
	}
	for _, cfg := range entries {
		svcs := serviceentry.ConvertServices(cfg)
		services = append(services, svcs...)
		for _, svc := range svcs {
			k := [2]string{svc.Namespace, svc.Hostname}
			m.services[k] = append(m.services[k], svc)
			if _, ok := m.hostNS[svc.Hostname]; !ok {
				m.hostNS[svc.Hostname] = svc.Namespace
			}
		}
		for _, e := range serviceentry.Endpoints(cfg, svcs, byNS[cfg.Namespace]) {
			m.endpoints[e.Hostname] = append(m.endpoints[e.Hostname], e)
		}
	}
	for _, h := range model.SortedKeys(m.endpoints) {
		endpoints = append(endpoints, m.endpoints[h]...)
	}
	m.disc = model.NewStaticDiscovery(services, endpoints, workloads)
	return m
}

// diff reports what the merge changed between two views: services of ServiceEntries (full, reason service)
// and merged endpoints (reason endpoint). The sources report their own changes themselves.
func diff(prev, next *merged) *model.PushRequest {
	var req *model.PushRequest
	var keys []model.ConfigKey
	for _, k := range unionKeys(next.services, prev.services) {
		if !reflect.DeepEqual(prev.services[k], next.services[k]) {
			keys = append(keys, model.ConfigKey{Kind: model.KindService, Namespace: k[0], Name: k[1]})
		}
	}
	if len(keys) > 0 {
		req = req.Merge(model.NewPushRequest(true, model.ReasonServiceUpdate, keys...))
	}
	keys = nil
	for _, h := range unionKeys(next.endpoints, prev.endpoints) {
		if !reflect.DeepEqual(prev.endpoints[h], next.endpoints[h]) {
			ns := next.hostNS[h]
			if ns == "" {
				ns = prev.hostNS[h]
			}
			keys = append(keys, model.ConfigKey{Kind: model.KindEndpoints, Name: h, Namespace: ns})
		}
	}
	if len(keys) > 0 {
		req = req.Merge(model.NewPushRequest(false, model.ReasonEndpointUpdate, keys...))
	}
	return req
}

// unionKeys returns the keys of either map.
func unionKeys[K comparable, V any](a, b map[K]V) []K {
	all := map[K]bool{}
	for k := range a {
		all[k] = true
	}
	for k := range b {
		all[k] = true
	}
	return slices.Collect(maps.Keys(all))
}
