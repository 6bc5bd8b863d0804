package security_test

import (
	"slices"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacpb "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	sec "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
	"github.com/meshd/meshd/pkg/networking/security"
)

func entry(ns, name string, spec *sec.AuthorizationPolicy) *model.AuthorizationPolicyEntry {
	return &model.AuthorizationPolicyEntry{
		Config: &model.Config{Kind: model.KindAuthorizationPolicy, Namespace: ns, Name: name, Spec: spec},
		Spec:   spec, Key: ns + "/" + name,
	}
}

// Expected-value helpers: the RBAC shapes spelled out.
func exact(s string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}}
}
func prefix(s string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: s}}
}
func suffix(s string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Suffix{Suffix: s}}
}
func regex(s string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: s}}}
}
func ignoreCase(m *matcher.StringMatcher) *matcher.StringMatcher { m.IgnoreCase = true; return m }

func anyPerm() *rbacpb.Permission { return &rbacpb.Permission{Rule: &rbacpb.Permission_Any{Any: true}} }
func anyID() *rbacpb.Principal {
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_Any{Any: true}}
}
func andPerms(ps ...*rbacpb.Permission) *rbacpb.Permission {
	return &rbacpb.Permission{Rule: &rbacpb.Permission_AndRules{AndRules: &rbacpb.Permission_Set{Rules: ps}}}
}
func orPerms(ps ...*rbacpb.Permission) *rbacpb.Permission {
	return &rbacpb.Permission{Rule: &rbacpb.Permission_OrRules{OrRules: &rbacpb.Permission_Set{Rules: ps}}}
}
func notPerm(p *rbacpb.Permission) *rbacpb.Permission {
	return &rbacpb.Permission{Rule: &rbacpb.Permission_NotRule{NotRule: p}}
}
func andIDs(ids ...*rbacpb.Principal) *rbacpb.Principal {
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_AndIds{AndIds: &rbacpb.Principal_Set{Ids: ids}}}
}
func orIDs(ids ...*rbacpb.Principal) *rbacpb.Principal {
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_OrIds{OrIds: &rbacpb.Principal_Set{Ids: ids}}}
}
func notID(id *rbacpb.Principal) *rbacpb.Principal {
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_NotId{NotId: id}}
}
func principal(m *matcher.StringMatcher) *rbacpb.Principal {
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_Authenticated_{Authenticated: &rbacpb.Principal_Authenticated{PrincipalName: m}}}
}
func headerPerm(name string, m *matcher.StringMatcher) *rbacpb.Permission {
	return &rbacpb.Permission{Rule: &rbacpb.Permission_Header{Header: &route.HeaderMatcher{Name: name,
		HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: m}}}}
}
func presentPerm(name string) *rbacpb.Permission {
	return &rbacpb.Permission{Rule: &rbacpb.Permission_Header{Header: &route.HeaderMatcher{Name: name,
		HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}}}}
}
func pathPerm(m *matcher.StringMatcher) *rbacpb.Permission {
	return &rbacpb.Permission{Rule: &rbacpb.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: m}}}}
}
func portPerm(p uint32) *rbacpb.Permission {
	return &rbacpb.Permission{Rule: &rbacpb.Permission_DestinationPort{DestinationPort: p}}
}
func cidr(ip string, bits uint32) *core.CidrRange {
	return &core.CidrRange{AddressPrefix: ip, PrefixLen: wrapperspb.UInt32(bits)}
}

func assertProto(t *testing.T, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("%s:\n got: %v\nwant: %v", what, got, want)
	}
}

// validate runs Envoy's validation (deeply) on every filter the RBAC gives, HTTP and network.
func validate(t *testing.T, r security.RBAC) {
	t.Helper()
	for _, f := range security.HTTPFilters(r) {
		if err := routestest.ValidateDeep(f); err != nil {
			t.Errorf("HTTP filter invalid: %v", err)
		}
	}
	for _, f := range security.NetworkFilters(r) {
		if err := routestest.ValidateDeep(f); err != nil {
			t.Errorf("network filter invalid: %v", err)
		}
	}
}

// An ALLOW policy without rules allows nothing: the ALLOW filter is there, with no policy, so Envoy denies every
// request. A rule {} allows everything.
func TestAllowNothingAndAllowAll(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		r := security.BuildRBAC(model.AuthorizationPolicies{Allow: []*model.AuthorizationPolicyEntry{
			entry("foo", "allow-nothing", &sec.AuthorizationPolicy{}),
		}}, tcp)
		validate(t, r)
		if r.Deny != nil || r.Allow == nil || r.Allow.Action != rbacpb.RBAC_ALLOW || len(r.Allow.Policies) != 0 {
			t.Errorf("tcp=%v allow-nothing = %+v, want an ALLOW filter without policies", tcp, r)
		}

		r = security.BuildRBAC(model.AuthorizationPolicies{Allow: []*model.AuthorizationPolicyEntry{
			entry("foo", "allow-all", &sec.AuthorizationPolicy{Rules: []*sec.Rule{{}}}),
		}}, tcp)
		validate(t, r)
		assertProto(t, "allow-all", r.Allow, &rbacpb.RBAC{Action: rbacpb.RBAC_ALLOW, Policies: map[string]*rbacpb.Policy{
			"ns[foo]-policy[allow-all]-rule[0]": {Permissions: []*rbacpb.Permission{andPerms(anyPerm())}, Principals: []*rbacpb.Principal{andIDs(anyID())}},
		}})
	}
	if r := security.BuildRBAC(model.AuthorizationPolicies{}, false); !r.Empty() {
		t.Errorf("no policy: %+v", r)
	}
}

// A full HTTP rule: every source and operation field with Istio's wildcard semantics and not-variants, and the when
// conditions joining the side they test.
func TestHTTPRuleTranslation(t *testing.T) {
	spec := &sec.AuthorizationPolicy{Rules: []*sec.Rule{{
		From: []*sec.Rule_From{
			{Source: &sec.Source{
				Principals:    []string{"cluster.local/ns/default/sa/productpage", "cluster.local/ns/prod/*", "*/sa/admin", "*"},
				NotPrincipals: []string{"cluster.local/ns/default/sa/evil"},
				Namespaces:    []string{"default", "team-*", "*-prod", "*"},
				NotNamespaces: []string{"kube-system"},
			}},
			{Source: &sec.Source{IpBlocks: []string{"10.0.0.1", "192.168.0.0/16"}, NotIpBlocks: []string{"192.168.1.0/24"},
				RemoteIpBlocks: []string{"203.0.113.4"}, ServiceAccounts: []string{"sa1", "other/sa2"}}},
		},
		To: []*sec.Rule_To{{Operation: &sec.Operation{
			Hosts:    []string{"reviews.example.com", "*.example.com", "reviews.*", "*"},
			Methods:  []string{"GET", "*"},
			NotHosts: []string{"admin.example.com"},
			Paths:    []string{"/exact", "/prefix/*", "*/suffix", "*"},
			NotPaths: []string{"/admin/*"},
			Ports:    []string{"9080"}, NotPorts: []string{"9090"},
		}}},
		When: []*sec.Condition{
			{Key: "request.headers[x-user]", Values: []string{"jason", "*"}},
			{Key: "source.ip", NotValues: []string{"10.9.9.9"}},
			{Key: "destination.port", Values: []string{"9080"}},
			{Key: "source.namespace", Values: []string{"default"}},
			{Key: "source.principal", Values: []string{"cluster.local/ns/default/sa/productpage"}},
		},
	}}}
	r := security.BuildRBAC(model.AuthorizationPolicies{Allow: []*model.AuthorizationPolicyEntry{entry("foo", "full", spec)}}, false)
	validate(t, r)

	whenIDs := []*rbacpb.Principal{
		orIDs(
			&rbacpb.Principal{Identifier: &rbacpb.Principal_Header{Header: &route.HeaderMatcher{Name: "x-user",
				HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: exact("jason")}}}},
			&rbacpb.Principal{Identifier: &rbacpb.Principal_Header{Header: &route.HeaderMatcher{Name: "x-user",
				HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}}}},
		),
		notID(orIDs(&rbacpb.Principal{Identifier: &rbacpb.Principal_DirectRemoteIp{DirectRemoteIp: cidr("10.9.9.9", 32)}})),
		orIDs(principal(regex(".*/ns/default/.*"))),
		orIDs(principal(exact("spiffe://cluster.local/ns/default/sa/productpage"))),
	}
	want := &rbacpb.Policy{
		Permissions: []*rbacpb.Permission{andPerms(
			orPerms(headerPerm(":authority", ignoreCase(exact("reviews.example.com"))), headerPerm(":authority", ignoreCase(suffix(".example.com"))),
				headerPerm(":authority", ignoreCase(prefix("reviews."))), presentPerm(":authority")),
			notPerm(orPerms(headerPerm(":authority", ignoreCase(exact("admin.example.com"))))),
			orPerms(portPerm(9080)),
			notPerm(orPerms(portPerm(9090))),
			orPerms(headerPerm(":method", exact("GET")), presentPerm(":method")),
			orPerms(pathPerm(exact("/exact")), pathPerm(prefix("/prefix/")), pathPerm(suffix("/suffix")), pathPerm(regex(".+"))),
			notPerm(orPerms(pathPerm(prefix("/admin/")))),
			orPerms(portPerm(9080)), // when destination.port
		)},
		Principals: []*rbacpb.Principal{
			andIDs(append([]*rbacpb.Principal{
				orIDs(principal(exact("spiffe://cluster.local/ns/default/sa/productpage")), principal(prefix("spiffe://cluster.local/ns/prod/")),
					principal(regex(`spiffe://.*/sa/admin`)), principal(regex(".+"))),
				notID(orIDs(principal(exact("spiffe://cluster.local/ns/default/sa/evil")))),
				orIDs(principal(regex(".*/ns/default/.*")), principal(regex(".*/ns/team-.*/.*")), principal(regex(".*/ns/.*-prod/.*")),
					principal(regex(".*/ns/.*/.*"))),
				notID(orIDs(principal(regex(".*/ns/kube-system/.*")))),
			}, whenIDs...)...),
			andIDs(append([]*rbacpb.Principal{
				orIDs(principal(regex(`spiffe://.+/ns/foo/(.+/|)sa/sa1(/.+)?`)), principal(regex(`spiffe://.+/ns/other/(.+/|)sa/sa2(/.+)?`))),
				orIDs(&rbacpb.Principal{Identifier: &rbacpb.Principal_DirectRemoteIp{DirectRemoteIp: cidr("10.0.0.1", 32)}},
					&rbacpb.Principal{Identifier: &rbacpb.Principal_DirectRemoteIp{DirectRemoteIp: cidr("192.168.0.0", 16)}}),
				notID(orIDs(&rbacpb.Principal{Identifier: &rbacpb.Principal_DirectRemoteIp{DirectRemoteIp: cidr("192.168.1.0", 24)}})),
				orIDs(&rbacpb.Principal{Identifier: &rbacpb.Principal_RemoteIp{RemoteIp: cidr("203.0.113.4", 32)}}),
			}, whenIDs...)...),
		},
	}
	assertProto(t, "full rule", r.Allow.Policies["ns[foo]-policy[full]-rule[0]"], want)
}

// DENY is a filter of its own, evaluated before ALLOW; CUSTOM (not implemented) denies what it selects; AUDIT
// changes nothing.
func TestDenyBeforeAllow(t *testing.T) {
	deny := entry("foo", "deny-admin", &sec.AuthorizationPolicy{Action: sec.AuthorizationPolicy_DENY, Rules: []*sec.Rule{
		{To: []*sec.Rule_To{{Operation: &sec.Operation{Paths: []string{"/admin/*"}}}}},
	}})
	custom := entry("foo", "ext", &sec.AuthorizationPolicy{Action: sec.AuthorizationPolicy_CUSTOM, Rules: []*sec.Rule{
		{To: []*sec.Rule_To{{Operation: &sec.Operation{Paths: []string{"/ext"}}}}},
	}})
	audit := entry("foo", "audit", &sec.AuthorizationPolicy{Action: sec.AuthorizationPolicy_AUDIT, Rules: []*sec.Rule{{}}})
	allow := entry("foo", "allow-get", &sec.AuthorizationPolicy{Rules: []*sec.Rule{
		{To: []*sec.Rule_To{{Operation: &sec.Operation{Methods: []string{"GET"}}}}},
	}})
	r := security.BuildRBAC(model.AuthorizationPolicies{Allow: []*model.AuthorizationPolicyEntry{allow},
		Deny: []*model.AuthorizationPolicyEntry{deny}, Custom: []*model.AuthorizationPolicyEntry{custom},
		Audit: []*model.AuthorizationPolicyEntry{audit}}, false)
	validate(t, r)
	if r.Deny.GetAction() != rbacpb.RBAC_DENY || r.Allow.GetAction() != rbacpb.RBAC_ALLOW {
		t.Fatalf("actions: deny %v allow %v", r.Deny.GetAction(), r.Allow.GetAction())
	}
	var names []string
	for n := range r.Deny.Policies {
		names = append(names, n)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"ns[foo]-policy[deny-admin]-rule[0]", "ns[foo]-policy[ext]-rule[0]"}) {
		t.Errorf("deny policies = %v (CUSTOM denies)", names)
	}
	if len(r.Allow.Policies) != 1 {
		t.Errorf("allow policies = %v (AUDIT adds nothing)", r.Allow.Policies)
	}
	fs := security.HTTPFilters(r)
	if len(fs) != 2 || fs[0].GetName() != "envoy.filters.http.rbac" || fs[1].GetName() != "envoy.filters.http.rbac" {
		t.Fatalf("HTTP filters = %v", fs)
	}
	first := &rbachttp.RBAC{}
	if err := fs[0].GetTypedConfig().UnmarshalTo(first); err != nil || first.GetRules().GetAction() != rbacpb.RBAC_DENY {
		t.Errorf("first filter = %v %v, want DENY", first, err)
	}
	if g := security.GRPCHTTPFilters(r); g[0].GetName() != "envoy.filters.http.rbac.DENY" || g[1].GetName() != "envoy.filters.http.rbac" {
		t.Errorf("gRPC filter names %q %q must differ", g[0].GetName(), g[1].GetName())
	}
	// Only AUDIT: no filter.
	if r := security.BuildRBAC(model.AuthorizationPolicies{Audit: []*model.AuthorizationPolicyEntry{audit}}, false); !r.Empty() {
		t.Errorf("AUDIT only: %+v", r)
	}
}

// TCP chains cannot see HTTP: an ALLOW rule using an HTTP-only field never matches (it is left out), a DENY rule
// drops the field and matches more. Both fail closed.
func TestTCPDropsHTTPOnlyFields(t *testing.T) {
	rules := []*sec.Rule{
		{To: []*sec.Rule_To{{Operation: &sec.Operation{Methods: []string{"GET"}}}}}, // 0: HTTP only
		{To: []*sec.Rule_To{{Operation: &sec.Operation{Ports: []string{"3306"}}}}},  // 1: TCP
		{From: []*sec.Rule_From{{Source: &sec.Source{Namespaces: []string{"ns-1"}}}}, // 2: TCP source,
			To: []*sec.Rule_To{{Operation: &sec.Operation{Paths: []string{"/x"}}}}}, //    HTTP operation
		{When: []*sec.Condition{{Key: "request.headers[x-user]", Values: []string{"a"}}}},                 // 3: HTTP only
		{From: []*sec.Rule_From{{Source: &sec.Source{RequestPrincipals: []string{"iss/sub"}}}}},           // 4: HTTP only
		{To: []*sec.Rule_To{{Operation: &sec.Operation{Hosts: []string{"db"}, Ports: []string{"3306"}}}}}, // 5: mixed
	}
	allow := security.BuildRBAC(model.AuthorizationPolicies{Allow: []*model.AuthorizationPolicyEntry{
		entry("foo", "p", &sec.AuthorizationPolicy{Rules: rules}),
	}}, true)
	validate(t, allow)
	assertProto(t, "TCP ALLOW keeps only the TCP rule", allow.Allow, &rbacpb.RBAC{Action: rbacpb.RBAC_ALLOW, Policies: map[string]*rbacpb.Policy{
		"ns[foo]-policy[p]-rule[1]": {Permissions: []*rbacpb.Permission{andPerms(orPerms(portPerm(3306)))}, Principals: []*rbacpb.Principal{andIDs(anyID())}},
	}})

	deny := security.BuildRBAC(model.AuthorizationPolicies{Deny: []*model.AuthorizationPolicyEntry{
		entry("foo", "p", &sec.AuthorizationPolicy{Action: sec.AuthorizationPolicy_DENY, Rules: rules}),
	}}, true)
	validate(t, deny)
	all := &rbacpb.Policy{Permissions: []*rbacpb.Permission{andPerms(anyPerm())}, Principals: []*rbacpb.Principal{andIDs(anyID())}}
	ports := []*rbacpb.Permission{andPerms(orPerms(portPerm(3306)))}
	assertProto(t, "TCP DENY drops HTTP fields", deny.Deny, &rbacpb.RBAC{Action: rbacpb.RBAC_DENY, Policies: map[string]*rbacpb.Policy{
		"ns[foo]-policy[p]-rule[0]": all,
		"ns[foo]-policy[p]-rule[1]": {Permissions: ports, Principals: []*rbacpb.Principal{andIDs(anyID())}},
		"ns[foo]-policy[p]-rule[2]": {Permissions: []*rbacpb.Permission{andPerms(anyPerm())}, Principals: []*rbacpb.Principal{andIDs(orIDs(principal(regex(".*/ns/ns-1/.*"))))}},
		"ns[foo]-policy[p]-rule[3]": all,
		"ns[foo]-policy[p]-rule[4]": all,
		"ns[foo]-policy[p]-rule[5]": {Permissions: ports, Principals: []*rbacpb.Principal{andIDs(anyID())}},
	}})

	// The same rules on HTTP chains keep everything.
	if h := security.BuildRBAC(model.AuthorizationPolicies{Allow: []*model.AuthorizationPolicyEntry{
		entry("foo", "p", &sec.AuthorizationPolicy{Rules: rules}),
	}}, false); len(h.Allow.Policies) != len(rules) {
		t.Errorf("HTTP ALLOW has %d policies, want %d", len(h.Allow.Policies), len(rules))
	}

	// Network filters: DENY first, Istio's stat prefix.
	fs := security.NetworkFilters(security.RBAC{Deny: deny.Deny, Allow: allow.Allow})
	if len(fs) != 2 || fs[0].GetName() != "envoy.filters.network.rbac" {
		t.Fatalf("network filters = %v", fs)
	}
	n := &rbacnet.RBAC{}
	if err := fs[0].GetTypedConfig().UnmarshalTo(n); err != nil || n.GetStatPrefix() != "tcp." || n.GetRules().GetAction() != rbacpb.RBAC_DENY {
		t.Errorf("first network filter = %v %v", n, err)
	}
}

// Values that cannot be expressed (here: trust domains, path templates, a bad port) fail closed the same way on
// HTTP chains; request principals match Istio's JWT metadata, which nothing sets without RequestAuthentication.
func TestUnsupportedFieldsFailClosed(t *testing.T) {
	rules := []*sec.Rule{
		{From: []*sec.Rule_From{{Source: &sec.Source{TrustDomains: []string{"td"}}}}},
		{To: []*sec.Rule_To{{Operation: &sec.Operation{Paths: []string{"/a/{*}/b"}}}}},
		{To: []*sec.Rule_To{{Operation: &sec.Operation{Ports: []string{"http"}}}}},
		{When: []*sec.Condition{{Key: "experimental.envoy.filters.a[b]", Values: []string{"x"}}}},
		{From: []*sec.Rule_From{{Source: &sec.Source{RequestPrincipals: []string{"iss/sub"}}}}},
	}
	allow := security.BuildRBAC(model.AuthorizationPolicies{Allow: []*model.AuthorizationPolicyEntry{
		entry("foo", "p", &sec.AuthorizationPolicy{Rules: rules}),
	}}, false)
	validate(t, allow)
	if len(allow.Allow.Policies) != 1 {
		t.Fatalf("ALLOW policies = %v, want only the request principal rule", allow.Allow.Policies)
	}
	assertProto(t, "request principal", allow.Allow.Policies["ns[foo]-policy[p]-rule[4]"].Principals[0], andIDs(orIDs(
		&rbacpb.Principal{Identifier: &rbacpb.Principal_Metadata{Metadata: &matcher.MetadataMatcher{
			Filter: "istio_authn",
			Path:   []*matcher.MetadataMatcher_PathSegment{{Segment: &matcher.MetadataMatcher_PathSegment_Key{Key: "request.auth.principal"}}},
			Value:  &matcher.ValueMatcher{MatchPattern: &matcher.ValueMatcher_StringMatch{StringMatch: exact("iss/sub")}},
		}}},
	)))
	deny := security.BuildRBAC(model.AuthorizationPolicies{Deny: []*model.AuthorizationPolicyEntry{
		entry("foo", "p", &sec.AuthorizationPolicy{Action: sec.AuthorizationPolicy_DENY, Rules: rules[:4]}),
	}}, false)
	validate(t, deny)
	for name, p := range deny.Deny.Policies {
		assertProto(t, name, p, &rbacpb.Policy{Permissions: []*rbacpb.Permission{andPerms(anyPerm())}, Principals: []*rbacpb.Principal{andIDs(anyID())}})
	}
	if len(deny.Deny.Policies) != 4 {
		t.Errorf("DENY policies = %d, want 4 (each denying everything)", len(deny.Deny.Policies))
	}
}
