package model

import (
	"hash/fnv"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	security "istio.io/api/security/v1beta1"
)

// MutualTLSMode is the effective PeerAuthentication mode of a workload port.
type MutualTLSMode int

const (
	// MTLSUnknown means no policy says anything (only returned where "unset" must be told apart).
	MTLSUnknown MutualTLSMode = iota
	// MTLSDisable accepts plaintext only.
	MTLSDisable
	// MTLSPermissive accepts mTLS and plaintext.
	MTLSPermissive
	// MTLSStrict accepts mTLS only.
	MTLSStrict
)

func (m MutualTLSMode) String() string {
	switch m {
	case MTLSDisable:
		return "DISABLE"
	case MTLSPermissive:
		return "PERMISSIVE"
	case MTLSStrict:
		return "STRICT"
	}
	return "UNKNOWN"
}

func mtlsModeOf(m *security.PeerAuthentication_MutualTLS) MutualTLSMode {
	switch m.GetMode() {
	case security.PeerAuthentication_MutualTLS_DISABLE:
		return MTLSDisable
	case security.PeerAuthentication_MutualTLS_PERMISSIVE:
		return MTLSPermissive
	case security.PeerAuthentication_MutualTLS_STRICT:
		return MTLSStrict
	}
	return MTLSUnknown // nil or UNSET: inherit
}

// TLSModeLabel is the workload label naming its TLS mode ("istio" when it runs a mesh proxy or agent).
const TLSModeLabel = "security.istio.io/tlsMode"

// DryRunAnnotation marks an AuthorizationPolicy that is evaluated but never enforced.
const DryRunAnnotation = "istio.io/dry-run"

// AuthorizationPolicyEntry is an AuthorizationPolicy with a content key.
type AuthorizationPolicyEntry struct {
	Config *Config
	Spec   *security.AuthorizationPolicy
	// Key is "namespace/name#hash-of-spec": equal keys mean equal policies, so resources built from policies can
	// carry their keys in cache keys.
	Key string
}

// AuthorizationPolicies are the policies that apply to one workload, by action, each list in a stable order
// (oldest first, then namespace and name).
type AuthorizationPolicies struct {
	Allow, Deny, Audit, Custom []*AuthorizationPolicyEntry
}

// Empty reports whether no policy applies.
func (a AuthorizationPolicies) Empty() bool {
	return len(a.Allow)+len(a.Deny)+len(a.Audit)+len(a.Custom) == 0
}

// Key concatenates the keys of every policy, by action: equal keys mean the same policies apply.
func (a AuthorizationPolicies) Key() string {
	if a.Empty() {
		return ""
	}
	var b strings.Builder
	for _, l := range []struct {
		tag string
		ps  []*AuthorizationPolicyEntry
	}{{"A", a.Allow}, {"D", a.Deny}, {"U", a.Audit}, {"C", a.Custom}} {
		b.WriteString(l.tag)
		for _, p := range l.ps {
			b.WriteString(p.Key)
			b.WriteByte(',')
		}
		b.WriteByte(';')
	}
	return b.String()
}

// MergedPeerAuthentication is the effective mTLS setting of one workload: the mode of its workload-level (or
// inherited namespace- or mesh-level) policy, and the port-level overrides of its workload policy, keyed by
// workload (target) port.
type MergedPeerAuthentication struct {
	Mode    MutualTLSMode
	PerPort map[uint32]MutualTLSMode
}

// ForPort is the mode for a workload port: the port-level setting, else the workload's.
func (m MergedPeerAuthentication) ForPort(port int) MutualTLSMode {
	if pm, ok := m.PerPort[uint32(port)]; ok {
		return pm
	}
	return m.Mode
}

// securityIndex holds the security policies of a push, by namespace, oldest first. It depends only on config,
// so endpoint-only pushes share it.
type securityIndex struct {
	peerAuthn map[string][]*Config
	authz     map[string][]*AuthorizationPolicyEntry
}

func (ps *PushContext) initSecurity(store ConfigStore) {
	idx := &securityIndex{peerAuthn: map[string][]*Config{}, authz: map[string][]*AuthorizationPolicyEntry{}}
	for _, c := range sortConfigs(store.List(KindPeerAuthentication)) {
		if _, ok := c.Spec.(*security.PeerAuthentication); ok {
			idx.peerAuthn[c.Namespace] = append(idx.peerAuthn[c.Namespace], c)
		}
	}
	for _, c := range sortConfigs(store.List(KindAuthorizationPolicy)) {
		spec, ok := c.Spec.(*security.AuthorizationPolicy)
		if !ok {
			continue
		}
		idx.authz[c.Namespace] = append(idx.authz[c.Namespace], &AuthorizationPolicyEntry{
			Config: c, Spec: spec, Key: c.Namespace + "/" + c.Name + "#" + specHash(spec),
		})
	}
	ps.security = idx
}

func specHash(m proto.Message) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		// Unmarshallable specs do not come out of the sources; give them a key no other spec shares.
		return "unmarshallable:" + err.Error()
	}
	h := fnv.New64a()
	h.Write(b)
	return strconv.FormatUint(h.Sum64(), 36)
}

// TrustDomain is the mesh's SPIFFE trust domain, "cluster.local" by default.
func (ps *PushContext) TrustDomain() string {
	if td := ps.Mesh.GetTrustDomain(); td != "" {
		return td
	}
	return "cluster.local"
}

// SpiffeURI is the SPIFFE identity of a service account: spiffe://<trust domain>/ns/<namespace>/sa/<account>.
func SpiffeURI(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

// ServiceAccounts returns the SPIFFE identities of the endpoints of a service (all its ports), sorted and
// distinct: the identities a client expects the service's servers to present. Endpoints without a service
// account add nothing. It reads endpoints, so it is computed per push (lazily, then memoised).
//
// Resources built from it (clusters with SAN checks) must carry it in their cache keys; and since it changes
// with endpoints, a source must send a full push when a service's set of service accounts changes.
func (ps *PushContext) ServiceAccounts(hostname string) []string {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if out, ok := ps.serviceAccounts[hostname]; ok {
		return out
	}
	td := ps.TrustDomain()
	var out []string
	for _, e := range ps.endpoints[hostname] {
		if e.ServiceAccount == "" {
			continue
		}
		out = append(out, SpiffeURI(td, e.Namespace, e.ServiceAccount))
	}
	slices.Sort(out)
	out = slices.Compact(out)
	if ps.serviceAccounts == nil {
		ps.serviceAccounts = map[string][]string{}
	}
	ps.serviceAccounts[hostname] = out
	return out
}

// hasSelector reports whether a workload selector selects specific workloads (non-empty matchLabels).
func hasSelector(labels map[string]string) bool { return len(labels) > 0 }

// PeerAuthentication merges the PeerAuthentications that apply to a workload in namespace ns with these labels,
// with Istio's precedence: the oldest workload policy (selector matching the labels, in ns; selector policies
// in the root namespace apply to nobody) over the oldest namespace policy (no selector, in ns) over the oldest
// mesh policy (no selector, in the root namespace) over PERMISSIVE. A level whose mode is UNSET inherits the
// level above; a port-level setting of the workload policy overrides for that workload port, UNSET inheriting
// the workload's mode.
func (ps *PushContext) PeerAuthentication(ns string, labels map[string]string) MergedPeerAuthentication {
	out := MergedPeerAuthentication{Mode: MTLSPermissive}
	if ps.security == nil {
		return out
	}
	root := ps.Mesh.GetRootNamespace()
	if m := ps.NamespaceMutualTLSMode(ns); m != MTLSUnknown {
		out.Mode = m
	}
	if ns == root {
		// Workload policies in the root namespace are not used, not even for its own workloads.
		return out
	}
	var workload *security.PeerAuthentication
	for _, c := range ps.security.peerAuthn[ns] {
		spec := c.Spec.(*security.PeerAuthentication)
		if hasSelector(spec.GetSelector().GetMatchLabels()) && SelectedBy(spec.Selector.MatchLabels, labels) {
			workload = spec
			break // oldest first
		}
	}
	if workload == nil {
		return out
	}
	if m := mtlsModeOf(workload.Mtls); m != MTLSUnknown {
		out.Mode = m
	}
	if len(workload.PortLevelMtls) > 0 {
		out.PerPort = make(map[uint32]MutualTLSMode, len(workload.PortLevelMtls))
		for port, m := range workload.PortLevelMtls {
			mode := mtlsModeOf(m)
			if mode == MTLSUnknown {
				mode = out.Mode
			}
			out.PerPort[port] = mode
		}
	}
	return out
}

// NamespaceMutualTLSMode is the mode set by the namespace-level policy of ns, else by the mesh-level policy,
// else MTLSUnknown. Workload and port policies are not considered: clients use it as a best-effort guess of how
// a service's servers are configured (Istio's auto-mTLS does the same).
func (ps *PushContext) NamespaceMutualTLSMode(ns string) MutualTLSMode {
	if ps.security == nil {
		return MTLSUnknown
	}
	root := ps.Mesh.GetRootNamespace()
	levelMode := func(namespace string) MutualTLSMode {
		for _, c := range ps.security.peerAuthn[namespace] {
			spec := c.Spec.(*security.PeerAuthentication)
			if !hasSelector(spec.GetSelector().GetMatchLabels()) {
				return mtlsModeOf(spec.Mtls) // the oldest one decides, UNSET included
			}
		}
		return MTLSUnknown
	}
	if ns != root {
		if m := levelMode(ns); m != MTLSUnknown {
			return m
		}
	}
	return levelMode(root)
}

// AuthorizationPolicies returns the AuthorizationPolicies that apply to a workload in namespace ns with these
// labels: those of ns without selector or whose selector matches, and those of the root namespace without
// selector (mesh-wide) or whose selector matches (in any namespace). Policies using targetRef(s) attach to
// gateways and waypoints, never to sidecars, and dry-run policies are not enforced, so neither is returned.
func (ps *PushContext) AuthorizationPolicies(ns string, labels map[string]string) AuthorizationPolicies {
	var out AuthorizationPolicies
	if ps.security == nil {
		return out
	}
	namespaces := []string{ns}
	if root := ps.Mesh.GetRootNamespace(); root != "" && root != ns {
		namespaces = append(namespaces, root)
	}
	for _, n := range namespaces {
		for _, e := range ps.security.authz[n] {
			spec := e.Spec
			if spec.TargetRef != nil || len(spec.TargetRefs) > 0 {
				continue
			}
			if strings.EqualFold(e.Config.Annotations[DryRunAnnotation], "true") {
				// TODO(authz): dry-run policies belong in the RBAC filters' shadow rules (metrics only).
				continue
			}
			if sel := spec.GetSelector().GetMatchLabels(); hasSelector(sel) && !SelectedBy(sel, labels) {
				continue
			}
			switch spec.Action {
			case security.AuthorizationPolicy_ALLOW:
				out.Allow = append(out.Allow, e)
			case security.AuthorizationPolicy_DENY:
				out.Deny = append(out.Deny, e)
			case security.AuthorizationPolicy_AUDIT:
				out.Audit = append(out.Audit, e)
			case security.AuthorizationPolicy_CUSTOM:
				out.Custom = append(out.Custom, e)
			}
		}
	}
	return out
}

// DeclaresMeshTLS reports whether the proxy itself says it runs with a mesh identity: the labels in its own node
// metadata carry security.istio.io/tlsMode=istio. Istio's injection sets that label, and its agent copies the pod
// labels into the node metadata and, for proxyless gRPC, writes the certificate providers into the bootstrap. The
// registry's view of the workload is not enough for proxyless gRPC: a hand-written bootstrap naming a mesh pod has
// no certificate provider, and grpc-go rejects security config naming one it does not have.
func (p *Proxy) DeclaresMeshTLS() bool {
	return p.Metadata != nil && p.Metadata.Labels[TLSModeLabel] == TLSModeIstio
}

// EndpointsChangeClusters reports whether the endpoints of hostname changed since prev in a way that changes
// its clusters, not only its load assignments: the service accounts the clusters verify, or the endpoints'
// TLS modes, which decide whether the clusters speak mesh mTLS. Such endpoint changes need a full push.
func (ps *PushContext) EndpointsChangeClusters(prev *PushContext, hostname string) bool {
	if !slices.Equal(ps.ServiceAccounts(hostname), prev.ServiceAccounts(hostname)) {
		return true
	}
	return tlsModes(ps.endpoints[hostname]) != tlsModes(prev.endpoints[hostname])
}

// tlsModes summarises which TLS modes a set of endpoints has: bit 0 for mesh (istio), bit 1 for others.
func tlsModes(eps []*Endpoint) uint8 {
	var m uint8
	for _, e := range eps {
		if e.TLSMode == TLSModeIstio {
			m |= 1
		} else {
			m |= 2
		}
	}
	return m
}
