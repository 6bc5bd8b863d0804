package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/serviceregistry/kube/nsfilter"
)

// Options configure a Controller.
type Options struct {
	// DomainSuffix is the cluster domain, cluster.local when empty.
	DomainSuffix string
	// ClusterID names the cluster in log lines ("Kubernetes" when empty).
	ClusterID string
	// Filter applies the discovery selectors; nil selects every namespace. The controller starts it.
	Filter *nsfilter.Filter
	// OnChange, optional, receives one request per published change, after the snapshot with the change is
	// visible. It is called from one goroutine, never concurrently.
	OnChange func(*model.PushRequest)
	// OnPublish, optional, is called after every publication, before OnChange, with the same request or nil
	// when the change needs no push (a workload changed without changing any endpoint). It is for consumers
	// that derive more from the snapshot, such as the merge of ServiceEntries.
	OnPublish func(*model.PushRequest)
	Logger    *slog.Logger
}

// Controller is the Kubernetes service registry: Services, EndpointSlices, Pods and Nodes from shared informers,
// in the namespaces the discovery selectors select, converted with the functions of this package.
//
// Readers see one immutable snapshot (a *model.StaticDiscovery), rebuilt and swapped after changes; informer
// handlers only update the controller's state and record what changed, and one goroutine publishes the
// snapshot and then reports the change to OnChange:
//   - EndpointSlice changes, and pod or node changes that only alter endpoints (labels, service account,
//     locality): a non-full request, reason endpoint, with KindEndpoints keys naming each service hostname
//     whose endpoints changed;
//   - Service changes: a full request, reason service, with a KindService key (hostname, namespace), plus the
//     KindPod keys of pods whose set of selecting services changed and the KindEndpoints keys of the service;
//   - Pod label changes that change which services select the pod: a full request with a KindPod key;
//   - Pod changes that alter neither endpoints nor membership (a new pod not yet in any EndpointSlice): the
//     snapshot (Workloads) is republished without a push.
//
// Nothing is published before every informer has synced; the first snapshot is reported as one full request,
// reason global. Changes landing while a snapshot is published are merged into the next request.
type Controller struct {
	client    kubernetes.Interface
	suffix    string
	cluster   string
	filter    *nsfilter.Filter
	onChange  func(*model.PushRequest)
	onPublish func(*model.PushRequest)
	log       *slog.Logger

	servicesInf *nsfilter.Informer
	slicesInf   *nsfilter.Informer
	podsInf     *nsfilter.Informer
	nodesInf    cache.SharedIndexInformer
	nodesReg    cache.ResourceEventHandlerRegistration

	mu sync.Mutex
	st state
	// pending is what changed since the last publication; changed says whether anything did (a workload can
	// change without a push).
	pending *model.PushRequest
	changed bool
	kick    chan struct{}

	snap            atomic.Pointer[model.StaticDiscovery]
	noConfig        *model.StaticConfigStore
	informersSynced atomic.Bool
	synced          atomic.Bool
	started         atomic.Bool
	done            chan struct{}
}

var (
	_ model.ServiceDiscovery = (*Controller)(nil)
	_ model.Snapshotter      = (*Controller)(nil)
)

// NewController returns a controller reading from client. Start starts the informers.
func NewController(client kubernetes.Interface, opts Options) (*Controller, error) {
	if client == nil {
		return nil, errors.New("kube registry: no Kubernetes client")
	}
	if opts.DomainSuffix == "" {
		opts.DomainSuffix = DefaultDomainSuffix
	}
	if opts.ClusterID == "" {
		opts.ClusterID = "Kubernetes"
	}
	if opts.Filter == nil {
		opts.Filter = nsfilter.Everything()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Controller{
		client:    client,
		suffix:    opts.DomainSuffix,
		cluster:   opts.ClusterID,
		filter:    opts.Filter,
		onChange:  opts.OnChange,
		onPublish: opts.OnPublish,
		log:       opts.Logger.With("component", "kube-registry", "cluster", opts.ClusterID),
		st:        newState(),
		kick:      make(chan struct{}, 1),
		noConfig:  model.NewStaticConfigStore(nil),
		done:      make(chan struct{}),
	}
	c.snap.Store(model.NewStaticDiscovery(nil, nil, nil))

	all := cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}
	var err error
	c.servicesInf, err = nsfilter.NewInformer(nsfilter.InformerOptions{
		Kind:     "Service",
		Informer: coreinformers.NewServiceInformer(client, metav1.NamespaceAll, 0, all),
		Filter:   c.filter,
		List: func(ctx context.Context, ns string) (runtime.Object, error) {
			return listed(client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{}))
		},
		Strip: stripService,
		Handler: nsfilter.Handler{
			Upsert: func(obj runtime.Object) {
				if svc, ok := obj.(*corev1.Service); ok {
					c.update(func() { c.setService(key(svc.Namespace, svc.Name), ConvertService(svc, c.suffix)) })
				}
			},
			Delete:        func(ns, name string) { c.update(func() { c.setService(key(ns, name), nil) }) },
			DropNamespace: func(ns string) { c.update(func() { c.dropServices(ns) }) },
		},
		Logger: c.log,
	})
	if err != nil {
		return nil, err
	}
	c.slicesInf, err = nsfilter.NewInformer(nsfilter.InformerOptions{
		Kind:     "EndpointSlice",
		Informer: discoveryinformers.NewEndpointSliceInformer(client, metav1.NamespaceAll, 0, all),
		Filter:   c.filter,
		List: func(ctx context.Context, ns string) (runtime.Object, error) {
			return listed(client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{}))
		},
		Strip: stripSlice,
		Handler: nsfilter.Handler{
			Upsert: func(obj runtime.Object) {
				if sl, ok := obj.(*discoveryv1.EndpointSlice); ok {
					c.update(func() { c.setSlice(key(sl.Namespace, sl.Name), sl) })
				}
			},
			Delete:        func(ns, name string) { c.update(func() { c.setSlice(key(ns, name), nil) }) },
			DropNamespace: func(ns string) { c.update(func() { c.dropSlices(ns) }) },
		},
		Logger: c.log,
	})
	if err != nil {
		return nil, err
	}
	c.podsInf, err = nsfilter.NewInformer(nsfilter.InformerOptions{
		Kind:     "Pod",
		Informer: coreinformers.NewPodInformer(client, metav1.NamespaceAll, 0, all),
		Filter:   c.filter,
		List: func(ctx context.Context, ns string) (runtime.Object, error) {
			return listed(client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}))
		},
		Strip: stripPod,
		Handler: nsfilter.Handler{
			Upsert: func(obj runtime.Object) {
				if pod, ok := obj.(*corev1.Pod); ok {
					c.update(func() { c.setPod(key(pod.Namespace, pod.Name), ConvertPod(pod), pod.Labels[LabelIstioLocality] != "") })
				}
			},
			Delete:        func(ns, name string) { c.update(func() { c.setPod(key(ns, name), nil, false) }) },
			DropNamespace: func(ns string) { c.update(func() { c.dropPods(ns) }) },
		},
		Logger: c.log,
	})
	if err != nil {
		return nil, err
	}
	c.nodesInf = coreinformers.NewNodeInformer(client, 0, cache.Indexers{})
	if err := c.nodesInf.SetTransform(stripNode); err != nil {
		return nil, fmt.Errorf("node informer: %w", err)
	}
	c.nodesReg, err = c.nodesInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.nodeEvent(obj, false) },
		UpdateFunc: func(_, obj any) { c.nodeEvent(obj, false) },
		DeleteFunc: func(obj any) { c.nodeEvent(obj, true) },
	})
	if err != nil {
		return nil, fmt.Errorf("node informer: %w", err)
	}
	return c, nil
}

// listed adapts a typed List call to the nsfilter list function, keeping a typed nil out of the interface.
func listed[L runtime.Object](l L, err error) (runtime.Object, error) {
	if err != nil {
		return nil, err
	}
	return l, nil
}

func key(ns, name string) types.NamespacedName {
	return types.NamespacedName{Namespace: ns, Name: name}
}

// Start starts the namespace filter, then (once it has synced, so that objects are filtered from the first
// listing) the informers, and the goroutine publishing snapshots. Everything stops when ctx is done; then Done
// is closed.
func (c *Controller) Start(ctx context.Context) error {
	if !c.started.CompareAndSwap(false, true) {
		return errors.New("kube registry: already started")
	}
	c.filter.Start(ctx)
	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}
	run(func() { c.publishLoop(ctx) })
	run(func() {
		if !c.filter.WaitForSync(ctx) {
			return
		}
		run(func() { c.servicesInf.Run(ctx) })
		run(func() { c.slicesInf.Run(ctx) })
		run(func() { c.podsInf.Run(ctx) })
		run(func() { c.nodesInf.RunWithContext(ctx) })
		if !cache.WaitForCacheSync(ctx.Done(), c.servicesInf.HasSynced, c.slicesInf.HasSynced, c.podsInf.HasSynced,
			c.nodesReg.HasSynced) {
			return
		}
		c.informersSynced.Store(true)
		c.signal()
	})
	go func() {
		<-ctx.Done()
		wg.Wait()
		close(c.done)
	}()
	return nil
}

// Done is closed when everything Start started has stopped.
func (c *Controller) Done() <-chan struct{} { return c.done }

// HasSynced reports whether every informer has delivered its initial listing and the first snapshot built from
// them is published.
func (c *Controller) HasSynced() bool { return c.synced.Load() }

// ClusterID is the cluster this controller reads.
func (c *Controller) ClusterID() string { return c.cluster }

// Filter is the namespace filter the controller applies.
func (c *Controller) Filter() *nsfilter.Filter { return c.filter }

// Services returns the services of the current snapshot, sorted by hostname.
func (c *Controller) Services() []*model.Service { return c.snap.Load().Services() }

// Endpoints returns the endpoints of a hostname in the current snapshot.
func (c *Controller) Endpoints(hostname string) []*model.Endpoint {
	return c.snap.Load().Endpoints(hostname)
}

// Workloads returns the pods of the current snapshot (sorted by namespace and name); proxies are found among
// them by IP and by "name.namespace".
func (c *Controller) Workloads() []*model.Workload { return c.snap.Load().Workloads() }

// Snapshot returns the current registry snapshot and an empty config store (the controller holds no Istio
// config).
func (c *Controller) Snapshot() (*model.StaticDiscovery, *model.StaticConfigStore) {
	return c.snap.Load(), c.noConfig
}

// Discovery returns the current registry snapshot.
func (c *Controller) Discovery() *model.StaticDiscovery { return c.snap.Load() }

// update applies a change to the state under the lock and wakes the publisher.
func (c *Controller) update(change func()) {
	c.mu.Lock()
	change()
	c.mu.Unlock()
	c.signal()
}

func (c *Controller) signal() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// push records a request to report with the next publication. Called with mu held.
func (c *Controller) push(req *model.PushRequest) {
	if req != nil {
		c.pending = c.pending.Merge(req)
	}
}

func (c *Controller) publishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
		if !c.informersSynced.Load() {
			continue
		}
		c.mu.Lock()
		first := !c.synced.Load()
		if !first && !c.changed {
			c.mu.Unlock()
			continue
		}
		next := c.st.build()
		c.snap.Store(next)
		req := c.pending
		c.pending, c.changed = nil, false
		c.mu.Unlock()
		if first {
			// The first snapshot replaces an empty registry: everything changed.
			req = model.NewPushRequest(true, model.ReasonGlobalUpdate)
			c.synced.Store(true)
			c.log.Info("kube registry synced", "services", len(next.Services()), "workloads", len(next.Workloads()),
				"selectedNamespaces", c.selectedDescription())
		}
		if c.onPublish != nil {
			c.onPublish(req)
		}
		if req != nil && c.onChange != nil {
			c.onChange(req)
		}
	}
}

func (c *Controller) selectedDescription() any {
	if ns := c.filter.SelectedNamespaces(); ns != nil {
		return ns
	}
	return "all"
}

func (c *Controller) nodeEvent(obj any, deleted bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj, deleted = t.Obj, true
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	loc := ""
	if !deleted {
		loc = Locality(n.Labels[LabelRegion], n.Labels[LabelZone], n.Labels[LabelSubzone])
	}
	c.update(func() { c.setNode(n.Name, loc, !deleted) })
}

// --- state ---

type podEntry struct {
	base *model.Workload // as converted from the pod
	// own is set when the pod names its locality (istio-locality label), which then wins over the node's.
	own bool
	w   *model.Workload // base with the node's locality: what is served
}

// state is what the controller knows, indexed for incremental updates. Every method is called with
// Controller.mu held.
type state struct {
	suffix string

	services map[types.NamespacedName]*model.Service
	// slices of each service (by the service-name label), by slice name; sliceOwner says where a slice is filed.
	slices     map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice
	sliceOwner map[types.NamespacedName]types.NamespacedName
	// svcsByIP counts, per endpoint address, the slices of each service that list it.
	svcsByIP map[string]map[types.NamespacedName]int
	eps      map[string][]*model.Endpoint // by hostname

	pods       map[types.NamespacedName]*podEntry
	podsByNS   map[string]map[types.NamespacedName]bool
	podsByNode map[string]map[types.NamespacedName]bool
	podsByIP   map[string]map[types.NamespacedName]bool
	// ipIndex is the workload endpoints at each IP take their pod information from.
	ipIndex map[string]*model.Workload
	nodes   map[string]string // locality by node name

	servicesDirty, workloadsDirty, endpointsDirty bool
	svcList                                       []*model.Service
	wlList                                        []*model.Workload
	epList                                        []*model.Endpoint
}

func newState() state {
	return state{
		services:   map[types.NamespacedName]*model.Service{},
		slices:     map[types.NamespacedName]map[string]*discoveryv1.EndpointSlice{},
		sliceOwner: map[types.NamespacedName]types.NamespacedName{},
		svcsByIP:   map[string]map[types.NamespacedName]int{},
		eps:        map[string][]*model.Endpoint{},
		pods:       map[types.NamespacedName]*podEntry{},
		podsByNS:   map[string]map[types.NamespacedName]bool{},
		podsByNode: map[string]map[types.NamespacedName]bool{},
		podsByIP:   map[string]map[types.NamespacedName]bool{},
		ipIndex:    map[string]*model.Workload{},
		nodes:      map[string]string{},
	}
}

// build returns a new snapshot of the state. Slices already published are never modified: the lists are
// rebuilt into new arrays when dirty.
func (s *state) build() *model.StaticDiscovery {
	if s.servicesDirty || s.svcList == nil {
		s.svcList = slices.Collect(maps.Values(s.services))
		slices.SortFunc(s.svcList, func(a, b *model.Service) int { return cmp.Compare(a.Hostname, b.Hostname) })
		s.servicesDirty = false
	}
	if s.workloadsDirty || s.wlList == nil {
		s.wlList = make([]*model.Workload, 0, len(s.pods))
		for _, p := range s.pods {
			s.wlList = append(s.wlList, p.w)
		}
		slices.SortFunc(s.wlList, func(a, b *model.Workload) int {
			return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
		})
		s.workloadsDirty = false
	}
	if s.endpointsDirty || s.epList == nil {
		n := 0
		for _, eps := range s.eps {
			n += len(eps)
		}
		s.epList = make([]*model.Endpoint, 0, n)
		for _, h := range model.SortedKeys(s.eps) {
			s.epList = append(s.epList, s.eps[h]...)
		}
		s.endpointsDirty = false
	}
	return model.NewStaticDiscovery(s.svcList, s.epList, s.wlList)
}

func (c *Controller) hostname(k types.NamespacedName) string {
	return Hostname(k.Name, k.Namespace, c.suffix)
}

// setService records the converted service k (nil: deleted).
func (c *Controller) setService(k types.NamespacedName, next *model.Service) {
	s := &c.st
	prev := s.services[k]
	if prev == nil && next == nil || prev != nil && next != nil && reflect.DeepEqual(prev, next) {
		return
	}
	host := c.hostname(k)
	if next == nil {
		delete(s.services, k)
	} else {
		s.services[k] = next
	}
	s.servicesDirty, c.changed = true, true
	req := model.NewPushRequest(true, model.ReasonServiceUpdate, model.ConfigKey{Kind: model.KindService, Name: host, Namespace: k.Namespace})
	if sel, nsel := selectorOf(prev), selectorOf(next); !maps.Equal(sel, nsel) {
		var keys []model.ConfigKey
		for pk := range s.podsByNS[k.Namespace] {
			labels := s.pods[pk].w.Labels
			if model.SelectedBy(sel, labels) != model.SelectedBy(nsel, labels) {
				keys = append(keys, model.ConfigKey{Kind: model.KindPod, Name: pk.Name, Namespace: pk.Namespace})
			}
		}
		if len(keys) > 0 {
			req = req.Merge(model.NewPushRequest(true, model.ReasonProxyUpdate, keys...))
		}
	}
	if c.recompute(k) {
		req = req.Merge(model.NewPushRequest(false, model.ReasonEndpointUpdate, model.ConfigKey{Kind: model.KindEndpoints, Name: host, Namespace: k.Namespace}))
	}
	c.push(req)
}

func selectorOf(s *model.Service) map[string]string {
	if s == nil {
		return nil
	}
	return s.Selector
}

func (c *Controller) dropServices(ns string) {
	for k := range c.st.services {
		if k.Namespace == ns {
			c.setService(k, nil)
		}
	}
}

// recompute rebuilds the endpoints of service k, reporting whether they changed.
func (c *Controller) recompute(k types.NamespacedName) bool {
	s := &c.st
	host := c.hostname(k)
	var eps []*model.Endpoint
	if svc := s.services[k]; svc != nil {
		switch {
		case svc.ExternalName != "":
			eps = EndpointsFromPods(svc, nil)
		case len(s.slices[k]) > 0:
			byName := s.slices[k]
			sl := make([]*discoveryv1.EndpointSlice, 0, len(byName))
			for _, name := range model.SortedKeys(byName) {
				sl = append(sl, byName[name])
			}
			eps = EndpointsFromSlices(svc, sl, s.ipIndex)
		}
	}
	if len(eps) == 0 {
		eps = nil
	}
	if reflect.DeepEqual(s.eps[host], eps) {
		return false
	}
	if eps == nil {
		delete(s.eps, host)
	} else {
		s.eps[host] = eps
	}
	s.endpointsDirty, c.changed = true, true
	return true
}

// endpointsKeys recomputes the services given and returns the keys of those whose endpoints changed.
func (c *Controller) endpointsKeys(svcs map[types.NamespacedName]bool) []model.ConfigKey {
	var keys []model.ConfigKey
	for k := range svcs {
		if c.recompute(k) {
			keys = append(keys, model.ConfigKey{Kind: model.KindEndpoints, Name: c.hostname(k), Namespace: k.Namespace})
		}
	}
	return keys
}

// setSlice records EndpointSlice k (nil: deleted, or no longer tied to a service).
func (c *Controller) setSlice(k types.NamespacedName, sl *discoveryv1.EndpointSlice) {
	s := &c.st
	if sl != nil && sl.Labels[LabelServiceName] == "" {
		sl = nil
	}
	touched := map[types.NamespacedName]bool{}
	if owner, ok := s.sliceOwner[k]; ok {
		if old := s.slices[owner][k.Name]; old != nil {
			s.indexSlice(owner, old, -1)
		}
		delete(s.slices[owner], k.Name)
		if len(s.slices[owner]) == 0 {
			delete(s.slices, owner)
		}
		delete(s.sliceOwner, k)
		touched[owner] = true
	}
	if sl != nil {
		owner := key(sl.Namespace, sl.Labels[LabelServiceName])
		if s.slices[owner] == nil {
			s.slices[owner] = map[string]*discoveryv1.EndpointSlice{}
		}
		s.slices[owner][k.Name] = sl
		s.sliceOwner[k] = owner
		s.indexSlice(owner, sl, 1)
		touched[owner] = true
	}
	if keys := c.endpointsKeys(touched); len(keys) > 0 {
		c.push(model.NewPushRequest(false, model.ReasonEndpointUpdate, keys...))
	}
}

func (s *state) indexSlice(owner types.NamespacedName, sl *discoveryv1.EndpointSlice, delta int) {
	for _, e := range sl.Endpoints {
		if len(e.Addresses) == 0 {
			continue
		}
		ip := e.Addresses[0]
		m := s.svcsByIP[ip]
		if m == nil {
			m = map[types.NamespacedName]int{}
			s.svcsByIP[ip] = m
		}
		m[owner] += delta
		if m[owner] <= 0 {
			delete(m, owner)
		}
		if len(m) == 0 {
			delete(s.svcsByIP, ip)
		}
	}
}

func (c *Controller) dropSlices(ns string) {
	for k := range c.st.sliceOwner {
		if k.Namespace == ns {
			c.setSlice(k, nil)
		}
	}
}

// setPod records pod k converted to base (nil: deleted or finished).
func (c *Controller) setPod(k types.NamespacedName, base *model.Workload, own bool) {
	s := &c.st
	prev := s.pods[k]
	if prev == nil && base == nil || prev != nil && base != nil && prev.own == own && reflect.DeepEqual(prev.base, base) {
		return
	}
	var next *podEntry
	if base != nil {
		next = &podEntry{base: base, own: own}
		next.w = s.effective(next)
	}
	ips := map[string]bool{}
	if prev != nil {
		s.unindexPod(k, prev)
		ips[prev.w.IP] = true
	}
	if next != nil {
		s.indexPod(k, next)
		ips[next.w.IP] = true
	}
	s.workloadsDirty, c.changed = true, true

	var req *model.PushRequest
	if prev != nil && next != nil && !maps.Equal(prev.w.Labels, next.w.Labels) &&
		!slices.Equal(c.selecting(k.Namespace, prev.w.Labels), c.selecting(k.Namespace, next.w.Labels)) {
		req = model.NewPushRequest(true, model.ReasonProxyUpdate, model.ConfigKey{Kind: model.KindPod, Name: k.Name, Namespace: k.Namespace})
	}
	if keys := c.refreshIPs(ips); len(keys) > 0 {
		req = req.Merge(model.NewPushRequest(false, model.ReasonEndpointUpdate, keys...))
	}
	c.push(req)
}

// selecting returns the hostnames of the services of ns whose selector picks labels, sorted.
func (c *Controller) selecting(ns string, labels map[string]string) []string {
	var out []string
	for k, svc := range c.st.services {
		if k.Namespace == ns && model.SelectedBy(svc.Selector, labels) {
			out = append(out, svc.Hostname)
		}
	}
	slices.Sort(out)
	return out
}

func (s *state) effective(p *podEntry) *model.Workload {
	if p.own {
		return p.base
	}
	loc := s.nodes[p.base.NodeName]
	if loc == "" || loc == p.base.Locality {
		return p.base
	}
	w := *p.base
	w.Locality = loc
	return &w
}

func addTo[K comparable](m map[K]map[types.NamespacedName]bool, k K, v types.NamespacedName) {
	if m[k] == nil {
		m[k] = map[types.NamespacedName]bool{}
	}
	m[k][v] = true
}

func removeFrom[K comparable](m map[K]map[types.NamespacedName]bool, k K, v types.NamespacedName) {
	delete(m[k], v)
	if len(m[k]) == 0 {
		delete(m, k)
	}
}

func (s *state) indexPod(k types.NamespacedName, p *podEntry) {
	s.pods[k] = p
	addTo(s.podsByNS, k.Namespace, k)
	if p.base.NodeName != "" {
		addTo(s.podsByNode, p.base.NodeName, k)
	}
	if p.w.IP != "" {
		addTo(s.podsByIP, p.w.IP, k)
	}
}

func (s *state) unindexPod(k types.NamespacedName, p *podEntry) {
	delete(s.pods, k)
	removeFrom(s.podsByNS, k.Namespace, k)
	if p.base.NodeName != "" {
		removeFrom(s.podsByNode, p.base.NodeName, k)
	}
	if p.w.IP != "" {
		removeFrom(s.podsByIP, p.w.IP, k)
	}
}

// refreshIPs re-chooses the workload at each IP and recomputes the services with endpoints at them, returning
// the keys of those whose endpoints changed.
func (c *Controller) refreshIPs(ips map[string]bool) []model.ConfigKey {
	s := &c.st
	svcs := map[types.NamespacedName]bool{}
	for ip := range ips {
		if ip == "" {
			continue
		}
		// Pods sharing an IP (host network): prefer a ready one, then the first by namespace and name.
		var best *model.Workload
		for pk := range s.podsByIP[ip] {
			w := s.pods[pk].w
			if best == nil || w.Ready && !best.Ready ||
				w.Ready == best.Ready && cmp.Or(cmp.Compare(w.Namespace, best.Namespace), cmp.Compare(w.Name, best.Name)) < 0 {
				best = w
			}
		}
		if best == nil {
			delete(s.ipIndex, ip)
		} else {
			s.ipIndex[ip] = best
		}
		for sk := range s.svcsByIP[ip] {
			svcs[sk] = true
		}
	}
	return c.endpointsKeys(svcs)
}

func (c *Controller) dropPods(ns string) {
	for k := range c.st.podsByNS[ns] {
		c.setPod(k, nil, false)
	}
}

// setNode records the locality of a node (present false: deleted) and updates the pods on it.
func (c *Controller) setNode(name, loc string, present bool) {
	s := &c.st
	if prev, ok := s.nodes[name]; ok == present && prev == loc {
		return
	}
	if present {
		s.nodes[name] = loc
	} else {
		delete(s.nodes, name)
	}
	ips := map[string]bool{}
	for pk := range s.podsByNode[name] {
		p := s.pods[pk]
		w := s.effective(p)
		if reflect.DeepEqual(w, p.w) {
			continue
		}
		p.w = w
		ips[w.IP] = true
		s.workloadsDirty, c.changed = true, true
	}
	if keys := c.refreshIPs(ips); len(keys) > 0 {
		c.push(model.NewPushRequest(false, model.ReasonEndpointUpdate, keys...))
	}
}

// --- transforms: keep what the conversion reads ---

func stripMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion, Generation: m.Generation,
		CreationTimestamp: m.CreationTimestamp, DeletionTimestamp: m.DeletionTimestamp,
		Labels: m.Labels, Annotations: m.Annotations,
	}
}

func stripService(obj runtime.Object) runtime.Object {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj
	}
	return &corev1.Service{ObjectMeta: stripMeta(svc.ObjectMeta), Spec: svc.Spec}
}

func stripSlice(obj runtime.Object) runtime.Object {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj
	}
	out := *sl
	out.ObjectMeta = stripMeta(sl.ObjectMeta)
	out.Annotations = nil
	return &out
}

func stripPod(obj runtime.Object) runtime.Object {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj
	}
	out := &corev1.Pod{ObjectMeta: stripMeta(pod.ObjectMeta)}
	out.Annotations = nil
	if v, ok := pod.Annotations[AnnotationSidecarStatus]; ok {
		out.Annotations = map[string]string{AnnotationSidecarStatus: v}
	}
	out.Spec.NodeName = pod.Spec.NodeName
	out.Spec.ServiceAccountName = pod.Spec.ServiceAccountName
	out.Spec.DeprecatedServiceAccount = pod.Spec.DeprecatedServiceAccount //nolint:staticcheck // read by ConvertPod
	out.Spec.HostNetwork = pod.Spec.HostNetwork
	for _, ct := range pod.Spec.Containers {
		kept := corev1.Container{Name: ct.Name}
		for _, p := range ct.Ports {
			kept.Ports = append(kept.Ports, corev1.ContainerPort{Name: p.Name, ContainerPort: p.ContainerPort, Protocol: p.Protocol})
		}
		out.Spec.Containers = append(out.Spec.Containers, kept)
	}
	out.Status.Phase = pod.Status.Phase
	out.Status.PodIP = pod.Status.PodIP
	out.Status.PodIPs = pod.Status.PodIPs
	for _, cond := range pod.Status.Conditions {
		// Types and statuses only: a pod with conditions but no Ready one is not ready, one without any is.
		out.Status.Conditions = append(out.Status.Conditions, corev1.PodCondition{Type: cond.Type, Status: cond.Status})
	}
	return out
}

func stripNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels}}, nil
}
