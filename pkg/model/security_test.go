package model

import (
	"slices"
	"testing"
	"time"

	security "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
)

// securityPush builds a push context over configs, created one second apart in order (earlier = older).
func securityPush(configs ...*Config) *PushContext {
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, c := range configs {
		c.CreationTimestamp = base.Add(time.Duration(i) * time.Second)
	}
	eps := []*Endpoint{
		{Hostname: "reviews.default.svc.cluster.local", ServicePort: 9080, Address: "10.0.0.2", Port: 9080, Namespace: "default", ServiceAccount: "reviews"},
		{Hostname: "reviews.default.svc.cluster.local", ServicePort: 9080, Address: "10.0.0.3", Port: 9080, Namespace: "default", ServiceAccount: "reviews"},
		{Hostname: "reviews.default.svc.cluster.local", ServicePort: 9090, Address: "10.0.0.4", Port: 9090, Namespace: "default", ServiceAccount: "admin"},
		{Hostname: "reviews.default.svc.cluster.local", ServicePort: 9080, Address: "10.0.0.5", Port: 9080, Namespace: "default"},
	}
	svc := &Service{Hostname: "reviews.default.svc.cluster.local", Name: "reviews", Namespace: "default",
		Ports: []*Port{{Name: "http", Port: 9080, Protocol: ProtocolHTTP}, {Name: "http-admin", Port: 9090, Protocol: ProtocolHTTP}}}
	return NewPushContext(&Environment{
		ServiceDiscovery: NewStaticDiscovery([]*Service{svc}, eps, nil),
		ConfigStore:      NewStaticConfigStore(configs),
		Mesh:             DefaultMeshConfig(),
	}, nil, nil)
}

func peerAuthn(ns, name string, selector map[string]string, mode security.PeerAuthentication_MutualTLS_Mode,
	ports map[uint32]security.PeerAuthentication_MutualTLS_Mode,
) *Config {
	spec := &security.PeerAuthentication{}
	if mode >= 0 {
		spec.Mtls = &security.PeerAuthentication_MutualTLS{Mode: mode}
	}
	if selector != nil {
		spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: selector}
	}
	if ports != nil {
		spec.PortLevelMtls = map[uint32]*security.PeerAuthentication_MutualTLS{}
		for p, m := range ports {
			spec.PortLevelMtls[p] = &security.PeerAuthentication_MutualTLS{Mode: m}
		}
	}
	return &Config{Kind: KindPeerAuthentication, Namespace: ns, Name: name, Spec: spec}
}

const (
	unset      = security.PeerAuthentication_MutualTLS_UNSET
	disable    = security.PeerAuthentication_MutualTLS_DISABLE
	permissive = security.PeerAuthentication_MutualTLS_PERMISSIVE
	strict     = security.PeerAuthentication_MutualTLS_STRICT
	noMTLS     = security.PeerAuthentication_MutualTLS_Mode(-1) // the mtls field left out
)

// The levels stack as in Istio: port > workload > namespace > mesh > PERMISSIVE.
func TestPeerAuthenticationPrecedence(t *testing.T) {
	app := map[string]string{"app": "reviews"}
	push := securityPush(
		peerAuthn("istio-system", "mesh", nil, strict, nil),
		peerAuthn("default", "ns", nil, permissive, nil),
		peerAuthn("default", "reviews", app, disable, map[uint32]security.PeerAuthentication_MutualTLS_Mode{9080: strict, 9090: unset}),
	)
	m := push.PeerAuthentication("default", app)
	if m.Mode != MTLSDisable || m.ForPort(9080) != MTLSStrict || m.ForPort(9090) != MTLSDisable || m.ForPort(7000) != MTLSDisable {
		t.Errorf("workload: mode %v, 9080 %v, 9090 %v (UNSET port inherits the workload), 7000 %v", m.Mode, m.ForPort(9080), m.ForPort(9090), m.ForPort(7000))
	}
	if m := push.PeerAuthentication("default", map[string]string{"app": "ratings"}); m.Mode != MTLSPermissive || m.PerPort != nil {
		t.Errorf("namespace level: %+v, want PERMISSIVE without ports", m)
	}
	if m := push.PeerAuthentication("other", app); m.Mode != MTLSStrict {
		t.Errorf("mesh level: %v, want STRICT (a selector policy in default does not reach other)", m.Mode)
	}
	if m := securityPush().PeerAuthentication("default", app); m.Mode != MTLSPermissive {
		t.Errorf("no policy: %v, want PERMISSIVE", m.Mode)
	}
	if got := push.NamespaceMutualTLSMode("default"); got != MTLSPermissive {
		t.Errorf("namespace mode of default = %v", got)
	}
	if got := push.NamespaceMutualTLSMode("other"); got != MTLSStrict {
		t.Errorf("namespace mode of other = %v (mesh)", got)
	}
	if got := securityPush().NamespaceMutualTLSMode("default"); got != MTLSUnknown {
		t.Errorf("namespace mode without policies = %v, want unknown", got)
	}
}

// UNSET (or no mtls) inherits the level above; the oldest policy of a level wins; selector policies in the root
// namespace apply to nobody.
func TestPeerAuthenticationInheritanceAndConflicts(t *testing.T) {
	app := map[string]string{"app": "reviews"}
	push := securityPush(
		peerAuthn("istio-system", "mesh", nil, disable, nil),
		peerAuthn("istio-system", "root-selector", app, strict, nil),
		peerAuthn("default", "ns-old", nil, unset, nil),
		peerAuthn("default", "ns-new", nil, strict, nil),
		peerAuthn("default", "wl-old", app, noMTLS, map[uint32]security.PeerAuthentication_MutualTLS_Mode{8080: permissive}),
		peerAuthn("default", "wl-new", app, strict, nil),
	)
	m := push.PeerAuthentication("default", app)
	if m.Mode != MTLSDisable {
		t.Errorf("mode = %v: the oldest namespace policy (UNSET) inherits the mesh DISABLE, the oldest workload policy has no mtls", m.Mode)
	}
	if m.ForPort(8080) != MTLSPermissive {
		t.Errorf("port 8080 = %v", m.ForPort(8080))
	}
	if m := push.PeerAuthentication("istio-system", app); m.Mode != MTLSDisable {
		t.Errorf("root namespace workload: %v, want the mesh DISABLE (root selector policies are ignored)", m.Mode)
	}
	if m := push.PeerAuthentication("other", app); m.Mode != MTLSDisable {
		t.Errorf("other namespace: %v", m.Mode)
	}
}

func authzPolicy(ns, name string, selector map[string]string, action security.AuthorizationPolicy_Action) *Config {
	spec := &security.AuthorizationPolicy{Action: action, Rules: []*security.Rule{{}}}
	if selector != nil {
		spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: selector}
	}
	return &Config{Kind: KindAuthorizationPolicy, Namespace: ns, Name: name, Spec: spec}
}

func policyNames(es []*AuthorizationPolicyEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Config.Namespace+"/"+e.Config.Name)
	}
	return out
}

// AuthorizationPolicies: namespace-wide and matching-selector policies of the workload's namespace, root-namespace
// policies (mesh-wide, or by selector in any namespace); never other namespaces, targetRef policies or dry-runs.
func TestAuthorizationPoliciesForWorkload(t *testing.T) {
	app := map[string]string{"app": "reviews", "version": "v1"}
	targetRef := authzPolicy("default", "waypoint", nil, security.AuthorizationPolicy_DENY)
	targetRef.Spec.(*security.AuthorizationPolicy).TargetRefs = []*typev1beta1.PolicyTargetReference{{Kind: "Service", Name: "reviews"}}
	dryRun := authzPolicy("default", "dry", nil, security.AuthorizationPolicy_DENY)
	dryRun.Annotations = map[string]string{DryRunAnnotation: "true"}
	emptySelector := authzPolicy("default", "empty-selector", map[string]string{}, security.AuthorizationPolicy_ALLOW)
	push := securityPush(
		authzPolicy("default", "ns-allow", nil, security.AuthorizationPolicy_ALLOW),
		authzPolicy("default", "reviews-deny", map[string]string{"app": "reviews"}, security.AuthorizationPolicy_DENY),
		authzPolicy("default", "ratings-allow", map[string]string{"app": "ratings"}, security.AuthorizationPolicy_ALLOW),
		authzPolicy("other", "other-allow", nil, security.AuthorizationPolicy_ALLOW),
		authzPolicy("istio-system", "mesh-deny", nil, security.AuthorizationPolicy_DENY),
		authzPolicy("istio-system", "mesh-reviews", map[string]string{"version": "v1"}, security.AuthorizationPolicy_ALLOW),
		authzPolicy("default", "audit", nil, security.AuthorizationPolicy_AUDIT),
		authzPolicy("default", "custom", nil, security.AuthorizationPolicy_CUSTOM),
		targetRef, dryRun, emptySelector,
	)
	got := push.AuthorizationPolicies("default", app)
	if a := policyNames(got.Allow); !slices.Equal(a, []string{"default/ns-allow", "default/empty-selector", "istio-system/mesh-reviews"}) {
		t.Errorf("allow = %v", a)
	}
	if d := policyNames(got.Deny); !slices.Equal(d, []string{"default/reviews-deny", "istio-system/mesh-deny"}) {
		t.Errorf("deny = %v", d)
	}
	if len(got.Audit) != 1 || len(got.Custom) != 1 {
		t.Errorf("audit %v custom %v", policyNames(got.Audit), policyNames(got.Custom))
	}
	other := push.AuthorizationPolicies("other", map[string]string{"app": "x"})
	if a, d := policyNames(other.Allow), policyNames(other.Deny); !slices.Equal(a, []string{"other/other-allow"}) ||
		!slices.Equal(d, []string{"istio-system/mesh-deny"}) {
		t.Errorf("other namespace: allow %v deny %v", a, d)
	}
	if !securityPush().AuthorizationPolicies("default", app).Empty() {
		t.Error("policies without config")
	}

	// Keys: same policies, same key; a spec change changes it.
	again := securityPush(authzPolicy("default", "ns-allow", nil, security.AuthorizationPolicy_ALLOW))
	changed := authzPolicy("default", "ns-allow", nil, security.AuthorizationPolicy_ALLOW)
	changed.Spec.(*security.AuthorizationPolicy).Rules[0].To = []*security.Rule_To{{Operation: &security.Operation{Methods: []string{"GET"}}}}
	k1 := again.AuthorizationPolicies("default", app).Key()
	if k2 := securityPush(authzPolicy("default", "ns-allow", nil, security.AuthorizationPolicy_ALLOW)).AuthorizationPolicies("default", app).Key(); k1 != k2 || k1 == "" {
		t.Errorf("equal policies, keys %q and %q", k1, k2)
	}
	if k3 := securityPush(changed).AuthorizationPolicies("default", app).Key(); k3 == k1 {
		t.Error("a changed rule kept the key")
	}
}

// ServiceAccounts: the SPIFFE identities of every endpoint of the service, sorted and distinct, in the mesh's
// trust domain.
func TestServiceAccounts(t *testing.T) {
	push := securityPush()
	want := []string{"spiffe://cluster.local/ns/default/sa/admin", "spiffe://cluster.local/ns/default/sa/reviews"}
	if got := push.ServiceAccounts("reviews.default.svc.cluster.local"); !slices.Equal(got, want) {
		t.Errorf("ServiceAccounts = %v, want %v", got, want)
	}
	if got := push.ServiceAccounts("nope"); len(got) != 0 {
		t.Errorf("unknown host: %v", got)
	}
	push.Mesh.TrustDomain = "example.org"
	if td := push.TrustDomain(); td != "example.org" {
		t.Errorf("trust domain %q", td)
	}
}
