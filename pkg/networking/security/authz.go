package security

import (
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacpb "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// RBAC filter names, as Envoy and Istio spell them. grpc-go requires distinct HTTP filter names, so its DENY
// filter carries a suffix (as Istio's gRPC generator does).
const (
	HTTPRBACFilterName     = "envoy.filters.http.rbac"
	GRPCRBACDenyFilterName = "envoy.filters.http.rbac.DENY"
	NetworkRBACFilterName  = "envoy.filters.network.rbac"
	// networkRBACStatPrefix is the stat prefix of network RBAC filters, as Istio's.
	networkRBACStatPrefix = "tcp."
	// authnFilterName is the filter metadata namespace where Istio's request authentication puts JWT claims.
	authnFilterName = "istio_authn"
)

// RBAC is the Envoy RBAC configuration of one workload's policies, for one kind of chain (HTTP or TCP). Deny is
// nil when no request can be denied by a DENY (or CUSTOM) policy; Allow is nil when no ALLOW policy applies,
// and otherwise set even with no Envoy policy in it: an ALLOW policy without rules allows nothing.
type RBAC struct {
	Deny, Allow *rbacpb.RBAC
}

// Empty reports whether no RBAC filter is needed.
func (r RBAC) Empty() bool { return r.Deny == nil && r.Allow == nil }

// BuildRBAC translates the policies that apply to a workload, for its HTTP chains (tcp false) or TCP chains.
//
// Envoy evaluates DENY before ALLOW (two filters, DENY first), as Istio does. Each rule becomes one Envoy policy
// named "ns[<ns>]-policy[<name>]-rule[<i>]"; its from entries are alternative principals, its to entries
// alternative permissions, and when conditions join the side they test. Fields that cannot be expressed, HTTP-only
// fields on TCP chains (methods, paths, hosts, request principals, request headers and claims) among them, make
// an ALLOW rule never match (the rule is left out) and are left out of a DENY rule (which then matches more):
// both fail closed, like Istio.
//
// CUSTOM policies (ext_authz) are not implemented: their rules deny, so what the external authorizer would have
// judged is refused rather than allowed (Istio does the same for a CUSTOM policy whose provider is unknown).
// AUDIT policies only log and are ignored.
//
// TODO(authz): CUSTOM through ext_authz; AUDIT through the RBAC audit logger; request principals and claims need
// RequestAuthentication (the istio_authn metadata is never set, so they never match); path templates.
func BuildRBAC(p model.AuthorizationPolicies, tcp bool) RBAC {
	var out RBAC
	if len(p.Deny)+len(p.Custom) > 0 {
		deny := &rbacpb.RBAC{Action: rbacpb.RBAC_DENY, Policies: map[string]*rbacpb.Policy{}}
		addPolicies(deny.Policies, p.Deny, tcp, false)
		if len(p.Custom) > 0 {
			slog.Debug("AuthorizationPolicy action CUSTOM is not implemented: its rules deny", "policies", len(p.Custom))
		}
		addPolicies(deny.Policies, p.Custom, tcp, false)
		if len(deny.Policies) > 0 {
			out.Deny = deny
		}
	}
	if len(p.Allow) > 0 {
		allow := &rbacpb.RBAC{Action: rbacpb.RBAC_ALLOW, Policies: map[string]*rbacpb.Policy{}}
		addPolicies(allow.Policies, p.Allow, tcp, true)
		out.Allow = allow
	}
	return out
}

func addPolicies(dst map[string]*rbacpb.Policy, entries []*model.AuthorizationPolicyEntry, tcp, allow bool) {
	for _, e := range entries {
		for i, r := range e.Spec.GetRules() {
			if r == nil {
				continue // a null rule matches nothing
			}
			t := translator{tcp: tcp, allow: allow, policyNS: e.Config.Namespace}
			pol := t.rule(r)
			name := fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", e.Config.Namespace, e.Config.Name, i)
			if t.dropped != "" {
				slog.Debug("AuthorizationPolicy rule never matches on this chain", "policy", e.Config.String(),
					"rule", i, "tcp", tcp, "reason", t.dropped)
				continue
			}
			dst[name] = pol
		}
	}
}

// HTTPFilters returns the HTTP RBAC filters for a sidecar's connection manager, DENY first.
func HTTPFilters(r RBAC) []*hcm.HttpFilter { return httpFilters(r, HTTPRBACFilterName) }

// GRPCHTTPFilters returns the HTTP RBAC filters for a proxyless gRPC server, DENY first, with distinct names.
func GRPCHTTPFilters(r RBAC) []*hcm.HttpFilter { return httpFilters(r, GRPCRBACDenyFilterName) }

func httpFilters(r RBAC, denyName string) []*hcm.HttpFilter {
	var out []*hcm.HttpFilter
	if r.Deny != nil {
		out = append(out, &hcm.HttpFilter{Name: denyName, ConfigType: &hcm.HttpFilter_TypedConfig{
			TypedConfig: util.MessageToAny(&rbachttp.RBAC{Rules: r.Deny}),
		}})
	}
	if r.Allow != nil {
		out = append(out, &hcm.HttpFilter{Name: HTTPRBACFilterName, ConfigType: &hcm.HttpFilter_TypedConfig{
			TypedConfig: util.MessageToAny(&rbachttp.RBAC{Rules: r.Allow}),
		}})
	}
	return out
}

// NetworkFilters returns the network RBAC filters that go before tcp_proxy on TCP chains, DENY first.
func NetworkFilters(r RBAC) []*listener.Filter {
	var out []*listener.Filter
	for _, rules := range []*rbacpb.RBAC{r.Deny, r.Allow} {
		if rules == nil {
			continue
		}
		out = append(out, &listener.Filter{Name: NetworkRBACFilterName, ConfigType: &listener.Filter_TypedConfig{
			TypedConfig: util.MessageToAny(&rbacnet.RBAC{Rules: rules, StatPrefix: networkRBACStatPrefix}),
		}})
	}
	return out
}

// translator turns one rule into an Envoy policy.
type translator struct {
	tcp bool
	// allow: a field that cannot be expressed drops the rule (set dropped); otherwise the field is left out.
	allow    bool
	policyNS string
	dropped  string
}

// cannot records a field that cannot be expressed on this chain.
func (t *translator) cannot(what string) {
	if t.allow && t.dropped == "" {
		t.dropped = what
	}
}

// httpOnly reports whether an HTTP-only field may be used, recording it when not.
func (t *translator) httpOnly(what string, n int) bool {
	if n == 0 {
		return false
	}
	if t.tcp {
		t.cannot(what + " (HTTP only)")
		return false
	}
	return true
}

func (t *translator) rule(r *security.Rule) *rbacpb.Policy {
	var whenPerms []*rbacpb.Permission
	var whenIDs []*rbacpb.Principal
	for _, c := range r.When {
		p, id := t.condition(c)
		whenPerms = append(whenPerms, p...)
		whenIDs = append(whenIDs, id...)
	}
	pol := &rbacpb.Policy{}
	if len(r.To) == 0 {
		pol.Permissions = []*rbacpb.Permission{andRules(whenPerms)}
	}
	for _, to := range r.To {
		perms := append(t.operation(to.GetOperation()), whenPerms...)
		pol.Permissions = append(pol.Permissions, andRules(perms))
	}
	if len(r.From) == 0 {
		pol.Principals = []*rbacpb.Principal{andIDs(whenIDs)}
	}
	for _, from := range r.From {
		ids := append(t.source(from.GetSource()), whenIDs...)
		pol.Principals = append(pol.Principals, andIDs(ids))
	}
	return pol
}

func andRules(rules []*rbacpb.Permission) *rbacpb.Permission {
	if len(rules) == 0 {
		rules = []*rbacpb.Permission{{Rule: &rbacpb.Permission_Any{Any: true}}}
	}
	return &rbacpb.Permission{Rule: &rbacpb.Permission_AndRules{AndRules: &rbacpb.Permission_Set{Rules: rules}}}
}

func andIDs(ids []*rbacpb.Principal) *rbacpb.Principal {
	if len(ids) == 0 {
		ids = []*rbacpb.Principal{{Identifier: &rbacpb.Principal_Any{Any: true}}}
	}
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_AndIds{AndIds: &rbacpb.Principal_Set{Ids: ids}}}
}

// orPerms ORs one permission per value (nil when no value translates); not wraps it in not_rule.
func (t *translator) orPerms(what string, values []string, not bool, mk func(string) *rbacpb.Permission) []*rbacpb.Permission {
	if len(values) == 0 {
		return nil
	}
	var rules []*rbacpb.Permission
	for _, v := range values {
		p := mk(v)
		if p == nil {
			// One value that cannot be expressed voids the whole field: the rule is dropped (ALLOW) or the
			// field left out, matching more (DENY).
			t.cannot(fmt.Sprintf("%s %q", what, v))
			return nil
		}
		rules = append(rules, p)
	}
	p := &rbacpb.Permission{Rule: &rbacpb.Permission_OrRules{OrRules: &rbacpb.Permission_Set{Rules: rules}}}
	if not {
		p = &rbacpb.Permission{Rule: &rbacpb.Permission_NotRule{NotRule: p}}
	}
	return []*rbacpb.Permission{p}
}

// orIDs is orPerms for principals.
func (t *translator) orIDs(what string, values []string, not bool, mk func(string) *rbacpb.Principal) []*rbacpb.Principal {
	if len(values) == 0 {
		return nil
	}
	var ids []*rbacpb.Principal
	for _, v := range values {
		p := mk(v)
		if p == nil {
			// One value that cannot be expressed voids the whole field: the rule is dropped (ALLOW) or the
			// field left out, matching more (DENY).
			t.cannot(fmt.Sprintf("%s %q", what, v))
			return nil
		}
		ids = append(ids, p)
	}
	p := &rbacpb.Principal{Identifier: &rbacpb.Principal_OrIds{OrIds: &rbacpb.Principal_Set{Ids: ids}}}
	if not {
		p = &rbacpb.Principal{Identifier: &rbacpb.Principal_NotId{NotId: p}}
	}
	return []*rbacpb.Principal{p}
}

// operation translates to.operation: hosts (:authority, case-insensitive), methods, paths, ports.
func (t *translator) operation(op *security.Operation) []*rbacpb.Permission {
	if op == nil {
		return nil
	}
	var out []*rbacpb.Permission
	if t.httpOnly("hosts", len(op.Hosts)+len(op.NotHosts)) {
		out = append(out, t.orPerms("host", op.Hosts, false, hostPerm)...)
		out = append(out, t.orPerms("host", op.NotHosts, true, hostPerm)...)
	}
	out = append(out, t.orPerms("port", op.Ports, false, portPerm)...)
	out = append(out, t.orPerms("port", op.NotPorts, true, portPerm)...)
	if t.httpOnly("methods", len(op.Methods)+len(op.NotMethods)) {
		out = append(out, t.orPerms("method", op.Methods, false, methodPerm)...)
		out = append(out, t.orPerms("method", op.NotMethods, true, methodPerm)...)
	}
	if t.httpOnly("paths", len(op.Paths)+len(op.NotPaths)) {
		out = append(out, t.orPerms("path", op.Paths, false, pathPerm)...)
		out = append(out, t.orPerms("path", op.NotPaths, true, pathPerm)...)
	}
	return out
}

// source translates from.source: principals, namespaces and service accounts (all on the peer certificate's
// URI SAN, the authenticated principal), request principals (JWT), ip blocks (direct peer) and remote ip blocks.
func (t *translator) source(s *security.Source) []*rbacpb.Principal {
	if s == nil {
		return nil
	}
	var out []*rbacpb.Principal
	out = append(out, t.orIDs("principal", s.Principals, false, principalID)...)
	out = append(out, t.orIDs("principal", s.NotPrincipals, true, principalID)...)
	if t.httpOnly("requestPrincipals", len(s.RequestPrincipals)+len(s.NotRequestPrincipals)) {
		mk := func(v string) *rbacpb.Principal { return authnMetadataID(v, "request.auth.principal") }
		out = append(out, t.orIDs("requestPrincipal", s.RequestPrincipals, false, mk)...)
		out = append(out, t.orIDs("requestPrincipal", s.NotRequestPrincipals, true, mk)...)
	}
	out = append(out, t.orIDs("namespace", s.Namespaces, false, namespaceID)...)
	out = append(out, t.orIDs("namespace", s.NotNamespaces, true, namespaceID)...)
	sa := func(v string) *rbacpb.Principal { return serviceAccountID(v, t.policyNS) }
	out = append(out, t.orIDs("serviceAccount", s.ServiceAccounts, false, sa)...)
	out = append(out, t.orIDs("serviceAccount", s.NotServiceAccounts, true, sa)...)
	out = append(out, t.orIDs("ipBlock", s.IpBlocks, false, directRemoteIPID)...)
	out = append(out, t.orIDs("ipBlock", s.NotIpBlocks, true, directRemoteIPID)...)
	out = append(out, t.orIDs("remoteIpBlock", s.RemoteIpBlocks, false, remoteIPID)...)
	out = append(out, t.orIDs("remoteIpBlock", s.NotRemoteIpBlocks, true, remoteIPID)...)
	if len(s.TrustDomains)+len(s.NotTrustDomains) > 0 {
		t.cannot("trustDomains (not implemented)")
	}
	return out
}

// condition translates one when condition into permissions (destination side) or principals (source side).
func (t *translator) condition(c *security.Condition) ([]*rbacpb.Permission, []*rbacpb.Principal) {
	key := c.GetKey()
	ids := func(what string, mk func(string) *rbacpb.Principal) []*rbacpb.Principal {
		return append(t.orIDs(what, c.Values, false, mk), t.orIDs(what, c.NotValues, true, mk)...)
	}
	perms := func(what string, mk func(string) *rbacpb.Permission) []*rbacpb.Permission {
		return append(t.orPerms(what, c.Values, false, mk), t.orPerms(what, c.NotValues, true, mk)...)
	}
	n := len(c.Values) + len(c.NotValues)
	switch {
	case strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]"):
		name := key[len("request.headers[") : len(key)-1]
		if !t.httpOnly(key, n) {
			return nil, nil
		}
		if name == "" {
			t.cannot(key)
			return nil, nil
		}
		return nil, ids(key, func(v string) *rbacpb.Principal { return headerID(name, v) })
	case key == "source.ip":
		return nil, ids(key, directRemoteIPID)
	case key == "remote.ip":
		return nil, ids(key, remoteIPID)
	case key == "source.namespace":
		return nil, ids(key, namespaceID)
	case key == "source.principal":
		return nil, ids(key, principalID)
	case key == "request.auth.principal" || key == "request.auth.audiences" || key == "request.auth.presenter":
		if !t.httpOnly(key, n) {
			return nil, nil
		}
		return nil, ids(key, func(v string) *rbacpb.Principal { return authnMetadataID(v, key) })
	case strings.HasPrefix(key, "request.auth.claims["):
		path, ok := claimPath(key)
		if !ok {
			t.cannot(key)
			return nil, nil
		}
		if !t.httpOnly(key, n) {
			return nil, nil
		}
		return nil, ids(key, func(v string) *rbacpb.Principal { return claimID(path, v) })
	case key == "destination.ip":
		return perms(key, destinationIPPerm), nil
	case key == "destination.port":
		return perms(key, portPerm), nil
	case key == "connection.sni":
		return perms(key, func(v string) *rbacpb.Permission {
			return &rbacpb.Permission{Rule: &rbacpb.Permission_RequestedServerName{RequestedServerName: wildcard(v, "")}}
		}), nil
	}
	t.cannot("condition " + key)
	return nil, nil
}

// wildcard is Istio's string match for policy values: "*" is any non-empty value, a leading "*" a suffix match,
// a trailing "*" a prefix match, anything else exact; prefix is prepended (not to "*").
func wildcard(v, prefix string) *matcher.StringMatcher {
	switch {
	case v == "*":
		return regexMatcher(".+")
	case strings.HasPrefix(v, "*"):
		if prefix == "" {
			return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Suffix{Suffix: v[1:]}}
		}
		return regexMatcher(regexp.QuoteMeta(prefix) + ".*" + regexp.QuoteMeta(v[1:]))
	case strings.HasSuffix(v, "*"):
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: prefix + v[:len(v)-1]}}
	}
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: prefix + v}}
}

func regexMatcher(re string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: re}}}
}

// headerMatcher matches a header by wildcard; "*" means "present".
func headerMatcher(name, v string, ignoreCase bool) *route.HeaderMatcher {
	if v == "*" {
		return &route.HeaderMatcher{Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}}
	}
	sm := wildcard(v, "")
	sm.IgnoreCase = ignoreCase
	return &route.HeaderMatcher{Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: sm}}
}

func hostPerm(v string) *rbacpb.Permission {
	return &rbacpb.Permission{Rule: &rbacpb.Permission_Header{Header: headerMatcher(":authority", v, true)}}
}

func methodPerm(v string) *rbacpb.Permission {
	return &rbacpb.Permission{Rule: &rbacpb.Permission_Header{Header: headerMatcher(":method", v, false)}}
}

// pathPerm matches the path without query: "/exact", "/prefix/*", "*/suffix", "*". Path templates ("{*}",
// "{**}") are not implemented.
func pathPerm(v string) *rbacpb.Permission {
	if strings.ContainsAny(v, "{}") {
		return nil
	}
	return &rbacpb.Permission{Rule: &rbacpb.Permission_UrlPath{UrlPath: &matcher.PathMatcher{
		Rule: &matcher.PathMatcher_Path{Path: wildcard(v, "")},
	}}}
}

func portPerm(v string) *rbacpb.Permission {
	p, err := strconv.Atoi(v)
	if err != nil || p <= 0 || p > 65535 {
		return nil
	}
	return &rbacpb.Permission{Rule: &rbacpb.Permission_DestinationPort{DestinationPort: uint32(p)}}
}

func destinationIPPerm(v string) *rbacpb.Permission {
	c := cidr(v)
	if c == nil {
		return nil
	}
	return &rbacpb.Permission{Rule: &rbacpb.Permission_DestinationIp{DestinationIp: c}}
}

// cidr parses "1.2.3.4" (a /32, or /128 for IPv6) or "10.0.0.0/8"; nil when it is neither.
func cidr(v string) *core.CidrRange {
	if p, err := netip.ParsePrefix(v); err == nil {
		return &core.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
	}
	if a, err := netip.ParseAddr(v); err == nil {
		return &core.CidrRange{AddressPrefix: a.String(), PrefixLen: wrapperspb.UInt32(uint32(a.BitLen()))}
	}
	return nil
}

// spiffePrefix is prepended to principals: policies name peers "cluster.local/ns/default/sa/x", the peer
// certificate's URI SAN is "spiffe://cluster.local/ns/default/sa/x".
const spiffePrefix = "spiffe://"

func authenticated(m *matcher.StringMatcher) *rbacpb.Principal {
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_Authenticated_{Authenticated: &rbacpb.Principal_Authenticated{PrincipalName: m}}}
}

func principalID(v string) *rbacpb.Principal { return authenticated(wildcard(v, spiffePrefix)) }

// namespaceID matches peers of a namespace: ".*/ns/<ns>/.*" on the principal, with wildcards.
func namespaceID(v string) *rbacpb.Principal {
	var ns string
	switch {
	case v == "*":
		ns = ".*"
	case strings.HasPrefix(v, "*"):
		ns = ".*" + regexp.QuoteMeta(v[1:])
	case strings.HasSuffix(v, "*"):
		ns = regexp.QuoteMeta(v[:len(v)-1]) + ".*"
	default:
		ns = regexp.QuoteMeta(v)
	}
	return authenticated(regexMatcher(".*/ns/" + ns + "/.*"))
}

// serviceAccountID matches "ns/sa" (or "sa" in the policy's namespace), in any trust domain, as Istio's: the ns and
// sa segments of the SPIFFE path, other key/value segments allowed around them.
func serviceAccountID(v, policyNS string) *rbacpb.Principal {
	ns, sa, ok := strings.Cut(v, "/")
	if !ok {
		ns, sa = policyNS, v
	}
	if ns == "" || sa == "" || strings.Contains(sa, "/") || strings.Contains(v, "*") {
		return nil
	}
	return authenticated(regexMatcher("spiffe://.+/ns/" + regexp.QuoteMeta(ns) + "/(.+/|)sa/" + regexp.QuoteMeta(sa) + "(/.+)?"))
}

func directRemoteIPID(v string) *rbacpb.Principal {
	c := cidr(v)
	if c == nil {
		return nil
	}
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_DirectRemoteIp{DirectRemoteIp: c}}
}

func remoteIPID(v string) *rbacpb.Principal {
	c := cidr(v)
	if c == nil {
		return nil
	}
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_RemoteIp{RemoteIp: c}}
}

func headerID(name, v string) *rbacpb.Principal {
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_Header{Header: headerMatcher(name, v, false)}}
}

// authnMetadataID matches a request-authentication attribute (set by Istio's JWT filter in istio_authn metadata).
func authnMetadataID(v, key string) *rbacpb.Principal {
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_Metadata{Metadata: &matcher.MetadataMatcher{
		Filter: authnFilterName,
		Path:   []*matcher.MetadataMatcher_PathSegment{{Segment: &matcher.MetadataMatcher_PathSegment_Key{Key: key}}},
		Value:  &matcher.ValueMatcher{MatchPattern: &matcher.ValueMatcher_StringMatch{StringMatch: wildcard(v, "")}},
	}}}
}

// claimPath parses "request.auth.claims[a][b]" into ["a", "b"].
func claimPath(key string) ([]string, bool) {
	rest := strings.TrimPrefix(key, "request.auth.claims")
	var path []string
	for rest != "" {
		if !strings.HasPrefix(rest, "[") {
			return nil, false
		}
		end := strings.Index(rest, "]")
		if end <= 1 {
			return nil, false
		}
		path = append(path, rest[1:end])
		rest = rest[end+1:]
	}
	return path, len(path) > 0
}

func claimID(path []string, v string) *rbacpb.Principal {
	segs := []*matcher.MetadataMatcher_PathSegment{{Segment: &matcher.MetadataMatcher_PathSegment_Key{Key: "request.auth.claims"}}}
	for _, p := range path {
		segs = append(segs, &matcher.MetadataMatcher_PathSegment{Segment: &matcher.MetadataMatcher_PathSegment_Key{Key: p}})
	}
	return &rbacpb.Principal{Identifier: &rbacpb.Principal_Metadata{Metadata: &matcher.MetadataMatcher{
		Filter: authnFilterName,
		Path:   segs,
		Value: &matcher.ValueMatcher{MatchPattern: &matcher.ValueMatcher_ListMatch{ListMatch: &matcher.ListMatcher{
			MatchPattern: &matcher.ListMatcher_OneOf{OneOf: &matcher.ValueMatcher{
				MatchPattern: &matcher.ValueMatcher_StringMatch{StringMatch: wildcard(v, "")},
			}},
		}}},
	}}}
}
