package model

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	meshconfig "istio.io/api/mesh/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"
)

// PushContext is an immutable snapshot of the mesh, built once per push and shared by every generator and proxy.
// Lazily computed per-namespace views are memoised behind a lock but never change once computed.
type PushContext struct {
	// Version identifies the push, e.g. "7"; it is sent as the xDS version_info.
	Version string
	// Seq increases by one per push context.
	Seq         uint64
	Mesh        *meshconfig.MeshConfig
	Domain      string
	ClusterID   string
	BuildTime   time.Time
	PrevVersion string

	// configSeq is the Seq of the last push that rebuilt services and config; generated resources that depend
	// only on them are valid as long as it does not change.
	configSeq uint64

	services       []*Service // sorted by hostname, then namespace
	servicesByHost map[string]*Service

	endpoints       map[string][]*Endpoint // by hostname
	endpointSeq     map[string]uint64      // by hostname: Seq of the push that last changed them
	workloadsByIP   map[string]*Workload
	workloadsByName map[string]*Workload // "name.namespace"

	virtualServices  []*VirtualServiceEntry
	destinationRules []*DestinationRuleEntry
	// drByNamespace indexes destinationRules by the namespace they live in.
	drByNamespace map[string]*namespaceRules
	gateways      []*Config
	sidecars      []*Config
	// security indexes PeerAuthentications and AuthorizationPolicies (security.go).
	security *securityIndex

	mu          sync.Mutex
	nsServices  map[string][]*Service
	nsVSForMesh map[string][]*VirtualServiceEntry
	// scopedServices memoises ServicesForProxy by proxy namespace and Sidecar.
	scopedServices map[string][]*Service
	// serviceAccounts memoises ServiceAccounts by hostname. It depends on endpoints: never shared with prev.
	serviceAccounts map[string][]string
}

// namespaceRules are the DestinationRules of one namespace, by exact host and wildcards (most specific first).
type namespaceRules struct {
	exact     map[string][]*DestinationRuleEntry
	wildcards []*DestinationRuleEntry
}

// VirtualServiceEntry is a VirtualService with its hosts resolved to fully qualified names.
type VirtualServiceEntry struct {
	Config *Config
	Spec   *networking.VirtualService
	// Hosts are the spec hosts resolved against the VirtualService's namespace.
	Hosts []string
}

// DestinationRuleEntry is a DestinationRule with its host resolved.
type DestinationRuleEntry struct {
	Config *Config
	Spec   *networking.DestinationRule
	Host   string
}

var pushSeq atomic.Uint64

// NewPushContext builds the snapshot for a push. With a previous context and an endpoint-only request, the
// service and configuration indexes are shared with prev and only the endpoints of the changed services are
// rebuilt, so EDS-only pushes cost what changed, not what exists.
func NewPushContext(env *Environment, prev *PushContext, req *PushRequest) *PushContext {
	seq := pushSeq.Add(1)
	ps := &PushContext{
		Seq:       seq,
		Version:   strconv.FormatUint(seq, 10),
		Mesh:      env.Mesh,
		Domain:    env.DomainSuffix,
		ClusterID: env.ClusterID,
		BuildTime: time.Now(),
	}
	if ps.Domain == "" {
		ps.Domain = "cluster.local"
	}
	if ps.ClusterID == "" {
		ps.ClusterID = "Kubernetes"
	}
	if prev != nil {
		ps.PrevVersion = prev.Version
	}
	sd, store := env.ServiceDiscovery, env.ConfigStore
	if snap, ok := sd.(Snapshotter); ok {
		d, c := snap.Snapshot()
		sd, store = d, c
	}
	if prev != nil && req != nil && !req.Full {
		ps.shareConfig(prev)
		ps.updateEndpoints(sd, prev, req)
		return ps
	}
	ps.configSeq = seq
	ps.initServices(sd)
	ps.initEndpoints(sd)
	ps.initConfig(store)
	return ps
}

func (ps *PushContext) shareConfig(prev *PushContext) {
	// Mesh config is part of the config state: an endpoint-only push keeps the one the config was built with.
	ps.Mesh = prev.Mesh
	ps.configSeq = prev.configSeq
	ps.services = prev.services
	ps.servicesByHost = prev.servicesByHost
	ps.virtualServices = prev.virtualServices
	ps.destinationRules = prev.destinationRules
	ps.drByNamespace = prev.drByNamespace
	ps.gateways = prev.gateways
	ps.sidecars = prev.sidecars
	ps.security = prev.security
	// Per-namespace views depend only on services and config, so they carry over too.
	prev.mu.Lock()
	ps.nsServices = prev.nsServices
	ps.nsVSForMesh = prev.nsVSForMesh
	ps.scopedServices = prev.scopedServices
	prev.mu.Unlock()
}

func (ps *PushContext) initServices(sd ServiceDiscovery) {
	ps.servicesByHost = map[string]*Service{}
	ps.initWorkloads(sd)
	if sd == nil {
		return
	}
	all := slices.Clone(sd.Services())
	// Oldest first wins a hostname clash (a ServiceEntry redefining a Kubernetes service), as in Istio.
	slices.SortStableFunc(all, func(a, b *Service) int {
		return cmp.Or(a.CreationTime.Compare(b.CreationTime), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Hostname, b.Hostname))
	})
	for _, s := range all {
		if _, dup := ps.servicesByHost[s.Hostname]; dup {
			continue
		}
		ps.servicesByHost[s.Hostname] = s
		ps.services = append(ps.services, s)
	}
	slices.SortFunc(ps.services, func(a, b *Service) int { return cmp.Compare(a.Hostname, b.Hostname) })
}

// initWorkloads indexes workloads. Pod IPs and readiness change with endpoint-only pushes, so this runs on
// every push; label changes, which move a workload between services, come with full pushes.
func (ps *PushContext) initWorkloads(sd ServiceDiscovery) {
	ps.workloadsByIP = map[string]*Workload{}
	ps.workloadsByName = map[string]*Workload{}
	if sd == nil {
		return
	}
	for _, w := range sd.Workloads() {
		if w.IP != "" {
			ps.workloadsByIP[w.IP] = w
		}
		ps.workloadsByName[w.Key()] = w
	}
}

func (ps *PushContext) initEndpoints(sd ServiceDiscovery) {
	ps.endpoints = make(map[string][]*Endpoint, len(ps.services))
	ps.endpointSeq = make(map[string]uint64, len(ps.services))
	if sd == nil {
		return
	}
	for _, s := range ps.services {
		ps.endpoints[s.Hostname] = sd.Endpoints(s.Hostname)
		ps.endpointSeq[s.Hostname] = ps.Seq
	}
}

func (ps *PushContext) updateEndpoints(sd ServiceDiscovery, prev *PushContext, req *PushRequest) {
	changed := map[string]bool{}
	for k := range req.ConfigsUpdated {
		if k.Kind == KindEndpoints {
			changed[k.Name] = true
		}
	}
	all := len(changed) == 0
	ps.initWorkloads(sd)
	ps.endpoints = make(map[string][]*Endpoint, len(ps.services))
	ps.endpointSeq = make(map[string]uint64, len(ps.services))
	for _, s := range ps.services {
		h := s.Hostname
		if all || changed[h] {
			if sd != nil {
				ps.endpoints[h] = sd.Endpoints(h)
			}
			ps.endpointSeq[h] = ps.Seq
			continue
		}
		ps.endpoints[h] = prev.endpoints[h]
		ps.endpointSeq[h] = prev.endpointSeq[h]
	}
}

func (ps *PushContext) initConfig(store ConfigStore) {
	if store == nil {
		return
	}
	for _, c := range sortConfigs(store.List(KindVirtualService)) {
		vs, ok := c.Spec.(*networking.VirtualService)
		if !ok {
			continue
		}
		e := &VirtualServiceEntry{Config: c, Spec: vs}
		for _, h := range vs.Hosts {
			e.Hosts = append(e.Hosts, ResolveHostname(h, c.Namespace, ps.Domain))
		}
		ps.virtualServices = append(ps.virtualServices, e)
	}
	ps.drByNamespace = map[string]*namespaceRules{}
	for _, c := range sortConfigs(store.List(KindDestinationRule)) {
		dr, ok := c.Spec.(*networking.DestinationRule)
		if !ok {
			continue
		}
		e := &DestinationRuleEntry{Config: c, Spec: dr, Host: ResolveHostname(dr.Host, c.Namespace, ps.Domain)}
		ps.destinationRules = append(ps.destinationRules, e)
		nr := ps.drByNamespace[c.Namespace]
		if nr == nil {
			nr = &namespaceRules{exact: map[string][]*DestinationRuleEntry{}}
			ps.drByNamespace[c.Namespace] = nr
		}
		if strings.HasPrefix(e.Host, "*") {
			nr.wildcards = append(nr.wildcards, e)
		} else {
			nr.exact[e.Host] = append(nr.exact[e.Host], e)
		}
	}
	for _, nr := range ps.drByNamespace {
		// Most specific (longest) wildcard first; the stable sort keeps the oldest first among equals.
		slices.SortStableFunc(nr.wildcards, func(a, b *DestinationRuleEntry) int { return cmp.Compare(len(b.Host), len(a.Host)) })
	}
	ps.gateways = sortConfigs(store.List(KindGateway))
	ps.sidecars = sortConfigs(store.List(KindSidecar))
	ps.initSecurity(store)
}

// sortConfigs orders configs oldest first, then by namespace and name: Istio's precedence for conflicts.
func sortConfigs(in []*Config) []*Config {
	out := slices.Clone(in)
	slices.SortStableFunc(out, func(a, b *Config) int {
		return cmp.Or(a.CreationTimestamp.Compare(b.CreationTimestamp), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// ConfigSeq identifies the services-and-config state: equal values mean equal services, mesh config,
// VirtualServices, DestinationRules, Gateways, Sidecars, PeerAuthentications and AuthorizationPolicies, so
// resources derived only from them can be reused.
// Endpoints and workload addresses change without it changing; workload labels do not (sources send a full
// push when labels change).
func (ps *PushContext) ConfigSeq() uint64 { return ps.configSeq }

// EndpointSeq identifies the endpoint state of one service, for caching EDS per cluster.
func (ps *PushContext) EndpointSeq(hostname string) uint64 { return ps.endpointSeq[hostname] }

// AllServices returns every service, sorted by hostname.
func (ps *PushContext) AllServices() []*Service { return ps.services }

// ServiceByHostname returns the service with this FQDN, or nil.
func (ps *PushContext) ServiceByHostname(h string) *Service { return ps.servicesByHost[h] }

// ServicesForNamespace returns the services a proxy in namespace ns may see, sorted by hostname.
func (ps *PushContext) ServicesForNamespace(ns string) []*Service {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if out, ok := ps.nsServices[ns]; ok {
		return out
	}
	out := make([]*Service, 0, len(ps.services))
	for _, s := range ps.services {
		if s.VisibleTo(ns) {
			out = append(out, s)
		}
	}
	if ps.nsServices == nil {
		ps.nsServices = map[string][]*Service{}
	}
	ps.nsServices[ns] = out
	return out
}

// Endpoints returns the endpoints serving the given port of a service.
func (ps *PushContext) Endpoints(hostname string, port int) []*Endpoint {
	all := ps.endpoints[hostname]
	out := make([]*Endpoint, 0, len(all))
	for _, e := range all {
		if e.ServicePort == port {
			out = append(out, e)
		}
	}
	return out
}

// EndpointCount returns how many endpoints the push holds, for metrics.
func (ps *PushContext) EndpointCount() int {
	n := 0
	for _, eps := range ps.endpoints {
		n += len(eps)
	}
	return n
}

// WorkloadByIP returns the workload with this address, or nil.
func (ps *PushContext) WorkloadByIP(ip string) *Workload { return ps.workloadsByIP[ip] }

// WorkloadForProxy finds the workload a proxy runs as: by its IPs first, then by the POD.NS of its node id.
func (ps *PushContext) WorkloadForProxy(p *Proxy) *Workload {
	for _, ip := range p.IPAddresses {
		if w := ps.workloadsByIP[ip]; w != nil && w.Namespace == p.Namespace {
			return w
		}
	}
	if p.PodName != "" {
		return ps.workloadsByName[p.PodName+"."+p.Namespace]
	}
	return nil
}

// VirtualServicesForMesh returns the VirtualServices that apply to sidecars (gateways empty or "mesh") and are
// visible from namespace ns, oldest first.
func (ps *PushContext) VirtualServicesForMesh(ns string) []*VirtualServiceEntry {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if out, ok := ps.nsVSForMesh[ns]; ok {
		return out
	}
	var out []*VirtualServiceEntry
	for _, e := range ps.virtualServices {
		if !appliesToMesh(e.Spec.Gateways) || !exportedTo(e.Spec.ExportTo, e.Config.Namespace, ns) {
			continue
		}
		out = append(out, e)
	}
	if ps.nsVSForMesh == nil {
		ps.nsVSForMesh = map[string][]*VirtualServiceEntry{}
	}
	ps.nsVSForMesh[ns] = out
	return out
}

func appliesToMesh(gateways []string) bool {
	if len(gateways) == 0 {
		return true
	}
	return slices.Contains(gateways, "mesh")
}

// VirtualServiceForHost returns the first VirtualService visible from ns whose hosts cover hostname, and the
// matching host pattern. Exact hosts beat wildcards.
func (ps *PushContext) VirtualServiceForHost(ns, hostname string) *VirtualServiceEntry {
	var wildcard *VirtualServiceEntry
	for _, e := range ps.VirtualServicesForMesh(ns) {
		for _, h := range e.Hosts {
			if h == hostname {
				return e
			}
			if wildcard == nil && HostMatches(h, hostname) {
				wildcard = e
			}
		}
	}
	return wildcard
}

// AllVirtualServices returns every VirtualService, oldest first.
func (ps *PushContext) AllVirtualServices() []*VirtualServiceEntry { return ps.virtualServices }

// DestinationRule returns the rule that applies to traffic from a proxy in namespace proxyNS to hostname:
// a rule in the proxy's namespace first, then one in the service's namespace, then one in the mesh root
// namespace; within each, an exact host beats the most specific wildcard. Rules must be exported to proxyNS.
func (ps *PushContext) DestinationRule(proxyNS, hostname string) *DestinationRuleEntry {
	svcNS := ""
	if s := ps.servicesByHost[hostname]; s != nil {
		svcNS = s.Namespace
	}
	root := ps.Mesh.GetRootNamespace()
	for _, ns := range []string{proxyNS, svcNS, root} {
		nr := ps.drByNamespace[ns]
		if ns == "" || nr == nil {
			continue
		}
		for _, e := range nr.exact[hostname] {
			if exportedTo(e.Spec.ExportTo, e.Config.Namespace, proxyNS) {
				return e
			}
		}
		for _, e := range nr.wildcards {
			if HostMatches(e.Host, hostname) && exportedTo(e.Spec.ExportTo, e.Config.Namespace, proxyNS) {
				return e
			}
		}
	}
	return nil
}

// Gateways returns every Gateway object.
func (ps *PushContext) Gateways() []*Config { return ps.gateways }

// SidecarForProxy returns the Sidecar resource that scopes this proxy: the one whose workloadSelector matches
// its labels, else the namespace-wide one without selector, else the root namespace's, else nil.
func (ps *PushContext) SidecarForProxy(p *Proxy) *Config {
	var nsDefault, rootDefault *Config
	for _, c := range ps.sidecars {
		sc, ok := c.Spec.(*networking.Sidecar)
		if !ok {
			continue
		}
		switch {
		case c.Namespace == p.Namespace && sc.WorkloadSelector != nil:
			if SelectedBy(sc.WorkloadSelector.Labels, p.Labels) {
				return c
			}
		case c.Namespace == p.Namespace && nsDefault == nil:
			nsDefault = c
		case c.Namespace == ps.Mesh.GetRootNamespace() && sc.WorkloadSelector == nil && rootDefault == nil:
			rootDefault = c
		}
	}
	if nsDefault != nil {
		return nsDefault
	}
	return rootDefault
}

// ServiceTarget is one service port a workload serves: the inbound side of a proxy.
type ServiceTarget struct {
	Service *Service
	Port    *Port
	// TargetPort is the port the workload listens on.
	TargetPort int
}

// ServiceTargets returns the service ports that select the workload, sorted by target port then hostname.
// Services select workloads in their own namespace only.
func (ps *PushContext) ServiceTargets(w *Workload) []ServiceTarget {
	if w == nil {
		return nil
	}
	var out []ServiceTarget
	for _, s := range ps.services {
		if s.Namespace != w.Namespace || !SelectedBy(s.Selector, w.Labels) {
			continue
		}
		for _, p := range s.Ports {
			tp := ResolveTargetPort(s, p, w)
			if tp == 0 {
				continue
			}
			out = append(out, ServiceTarget{Service: s, Port: p, TargetPort: tp})
		}
	}
	slices.SortFunc(out, func(a, b ServiceTarget) int {
		return cmp.Or(cmp.Compare(a.TargetPort, b.TargetPort), cmp.Compare(a.Service.Hostname, b.Service.Hostname))
	})
	return out
}

// ResolveTargetPort returns the workload port a service port forwards to, or 0 when a named target port is
// not declared by the workload.
func ResolveTargetPort(s *Service, p *Port, w *Workload) int {
	tp, ok := s.TargetPorts[p.Port]
	if !ok {
		return p.Port
	}
	if tp.Name != "" {
		if w == nil {
			return 0
		}
		return w.ContainerPorts[tp.Name]
	}
	if tp.Number == 0 {
		return p.Port
	}
	return tp.Number
}

// ServicesForProxy returns the services a proxy sends traffic to, sorted by hostname: those visible from its
// namespace, narrowed by the egress hosts of the Sidecar resource that scopes it ("ns/host", "*/host",
// "./host", with wildcards).
func (ps *PushContext) ServicesForProxy(p *Proxy) []*Service {
	visible := ps.ServicesForNamespace(p.Namespace)
	sc := ps.SidecarForProxy(p)
	if sc == nil {
		return visible
	}
	spec := sc.Spec.(*networking.Sidecar)
	if len(spec.Egress) == 0 {
		return visible
	}
	key := p.Namespace + "/" + sc.Namespace + "/" + sc.Name
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if out, ok := ps.scopedServices[key]; ok {
		return out
	}
	var hosts []string
	for _, eg := range spec.Egress {
		hosts = append(hosts, eg.Hosts...)
	}
	out := make([]*Service, 0, len(visible))
	for _, s := range visible {
		if egressAllows(hosts, sc.Namespace, s) {
			out = append(out, s)
		}
	}
	if ps.scopedServices == nil {
		ps.scopedServices = map[string][]*Service{}
	}
	ps.scopedServices[key] = out
	return out
}

func egressAllows(hosts []string, sidecarNS string, s *Service) bool {
	for _, h := range hosts {
		ns, host, ok := strings.Cut(h, "/")
		if !ok {
			ns, host = "*", h
		}
		if ns == "." {
			ns = sidecarNS
		}
		if ns == "~" || (ns != "*" && ns != s.Namespace) {
			continue
		}
		if HostMatches(host, s.Hostname) {
			return true
		}
	}
	return false
}

// AllDestinationRules returns every DestinationRule, oldest first.
func (ps *PushContext) AllDestinationRules() []*Config {
	out := make([]*Config, len(ps.destinationRules))
	for i, e := range ps.destinationRules {
		out[i] = e.Config
	}
	return out
}

// AllSidecars returns every Sidecar resource.
func (ps *PushContext) AllSidecars() []*Config { return ps.sidecars }
