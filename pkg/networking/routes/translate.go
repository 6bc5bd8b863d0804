// Package routes translates VirtualServices into Envoy routes and builds the route configurations (RDS) for
// Envoy sidecars and for proxyless gRPC clients. The HTTP translation lives in one place, TranslateHTTPRoutes,
// and both generators use it; the gRPC flavor only drops what grpc-go does not implement.
package routes

import (
	"log/slog"
	"regexp"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// Flavor says which data plane a translation is for.
type Flavor int

const (
	// Sidecar is an Envoy sidecar: the whole VirtualService feature set.
	Sidecar Flavor = iota
	// GRPC is a proxyless grpc-go client, which implements only part of RouteConfiguration: path, header and
	// weighted-cluster routing, timeouts (as max_stream_duration), retries and header hash policies.
	GRPC
)

// Names of the HTTP filters the routes configure per route, as the listeners install them.
const (
	FaultFilterName  = "envoy.filters.http.fault"
	CORSFilterName   = "envoy.filters.http.cors"
	RouterFilterName = "envoy.filters.http.router"
)

// DefaultRouteName is the name Istio gives the route of a service without VirtualService.
const DefaultRouteName = "default"

// TranslateHTTPRoutes turns the HTTP rules of a VirtualService into Envoy routes for traffic a proxy sends on
// one service port. Match blocks that do not apply to the proxy (another port, sourceLabels or sourceNamespace
// that do not select it, gateways without "mesh") are dropped; a rule with match blocks none of which applies
// is dropped entirely. Each applicable match block becomes one route with the rule's action. Translation stops
// after a rule that matches everything (later rules are unreachable). Rules that cannot be expressed (for the
// flavor, or because they are invalid) are dropped with a log line; the result is always valid Envoy config.
func TranslateHTTPRoutes(vs *model.VirtualServiceEntry, push *model.PushContext, proxy *model.Proxy, port int, flavor Flavor) []*route.Route {
	if vs == nil || vs.Spec == nil {
		return nil
	}
	t := &translator{vs: vs, push: push, proxy: proxy, port: port, flavor: flavor}
	var out []*route.Route
	for _, rule := range vs.Spec.GetHttp() {
		rs, catchAll := t.rule(rule)
		out = append(out, rs...)
		if catchAll {
			break
		}
	}
	return out
}

type translator struct {
	vs     *model.VirtualServiceEntry
	push   *model.PushContext
	proxy  *model.Proxy
	port   int
	flavor Flavor
}

func (t *translator) grpc() bool { return t.flavor == GRPC }

func (t *translator) logDrop(rule *networking.HTTPRoute, why string) {
	slog.Debug("VirtualService rule dropped", "virtualservice", t.vs.Config.Namespace+"/"+t.vs.Config.Name,
		"rule", rule.GetName(), "port", t.port, "reason", why)
}

// rule translates one HTTP rule; catchAll reports that it matches every request for this proxy.
func (t *translator) rule(rule *networking.HTTPRoute) (out []*route.Route, catchAll bool) {
	if rule.GetDelegate() != nil {
		t.logDrop(rule, "delegate is not supported for sidecars")
		return nil, false
	}
	var applicable []*networking.HTTPMatchRequest
	for _, m := range rule.GetMatch() {
		if !MatchAppliesTo(m.GetPort(), m.GetSourceLabels(), m.GetSourceNamespace(), m.GetGateways(), t.proxy, t.port) {
			continue
		}
		if bad := invalidRegex(m); bad != "" {
			slog.Debug("VirtualService match block dropped: invalid RE2 regex", "virtualservice",
				t.vs.Config.Namespace+"/"+t.vs.Config.Name, "rule", rule.GetName(), "regex", bad)
			continue
		}
		if t.grpc() && len(m.GetQueryParams()) > 0 {
			// grpc-go skips routes with query parameter matchers; dropping is the same, and explicit.
			continue
		}
		applicable = append(applicable, m)
	}
	if len(rule.GetMatch()) > 0 && len(applicable) == 0 {
		return nil, false
	}
	tmpl := t.template(rule)
	if tmpl == nil {
		return nil, false
	}
	if len(rule.GetMatch()) == 0 {
		r := newRoute(tmpl, rule.GetName(), &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}})
		return []*route.Route{r}, true
	}
	for _, m := range applicable {
		name := rule.GetName()
		if m.GetName() != "" {
			if name != "" {
				name += "." + m.GetName()
			} else {
				name = m.GetName()
			}
		}
		out = append(out, newRoute(tmpl, name, translateMatch(m)))
		if isCatchAllMatch(m) {
			return out, true
		}
	}
	return out, false
}

// newRoute is a route with the rule-wide parts of tmpl, which are shared (read-only) between the routes of
// the rule's match blocks.
func newRoute(tmpl *route.Route, name string, m *route.RouteMatch) *route.Route {
	return &route.Route{
		Name:                    name,
		Match:                   m,
		Action:                  tmpl.Action,
		Metadata:                tmpl.Metadata,
		TypedPerFilterConfig:    tmpl.TypedPerFilterConfig,
		RequestHeadersToAdd:     tmpl.RequestHeadersToAdd,
		RequestHeadersToRemove:  tmpl.RequestHeadersToRemove,
		ResponseHeadersToAdd:    tmpl.ResponseHeadersToAdd,
		ResponseHeadersToRemove: tmpl.ResponseHeadersToRemove,
	}
}

// MatchAppliesTo reports whether a VirtualService match block (HTTP or TCP) applies to traffic the proxy sends
// on port: its port (0 = any), sourceLabels, sourceNamespace and gateways ("mesh" or none) must all allow it.
func MatchAppliesTo(matchPort uint32, sourceLabels map[string]string, sourceNamespace string, gateways []string, proxy *model.Proxy, port int) bool {
	if matchPort != 0 && int(matchPort) != port {
		return false
	}
	if len(gateways) > 0 && !containsString(gateways, "mesh") {
		return false
	}
	if sourceNamespace != "" && (proxy == nil || proxy.Namespace != sourceNamespace) {
		return false
	}
	if len(sourceLabels) > 0 && (proxy == nil || !model.LabelsMatch(sourceLabels, proxy.Labels)) {
		return false
	}
	return true
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// template builds everything of a rule's routes but the name and the match, or nil when the rule cannot be
// translated for this flavor.
func (t *translator) template(rule *networking.HTTPRoute) *route.Route {
	out := &route.Route{}
	switch {
	case rule.GetRedirect() != nil:
		if t.grpc() {
			t.logDrop(rule, "grpc-go does not support redirects")
			return nil
		}
		out.Action = &route.Route_Redirect{Redirect: t.redirect(rule.GetRedirect())}
	case rule.GetDirectResponse() != nil:
		if t.grpc() {
			t.logDrop(rule, "grpc-go does not support direct responses")
			return nil
		}
		dr := rule.GetDirectResponse()
		if dr.GetStatus() < 200 || dr.GetStatus() >= 600 {
			t.logDrop(rule, "directResponse status out of range")
			return nil
		}
		action := &route.DirectResponseAction{Status: dr.GetStatus()}
		switch b := dr.GetBody().GetSpecifier().(type) {
		case *networking.HTTPBody_String_:
			action.Body = &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: b.String_}}
		case *networking.HTTPBody_Bytes:
			action.Body = &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b.Bytes}}
		}
		out.Action = &route.Route_DirectResponse{DirectResponse: action}
	case len(rule.GetRoute()) > 0:
		action := t.routeAction(rule, out)
		if action == nil {
			return nil
		}
		out.Action = &route.Route_Route{Route: action}
	default:
		t.logDrop(rule, "no route, redirect or directResponse")
		return nil
	}
	if t.grpc() {
		return out
	}

	reqOps := translateHeaderOps(rule.GetHeaders().GetRequest(), true)
	respOps := translateHeaderOps(rule.GetHeaders().GetResponse(), false)
	out.RequestHeadersToAdd = append(out.RequestHeadersToAdd, reqOps.add...)
	out.RequestHeadersToRemove = append(out.RequestHeadersToRemove, reqOps.remove...)
	out.ResponseHeadersToAdd = append(out.ResponseHeadersToAdd, respOps.add...)
	out.ResponseHeadersToRemove = append(out.ResponseHeadersToRemove, respOps.remove...)
	if ra, ok := out.Action.(*route.Route_Route); ok && reqOps.authority != "" && ra.Route.HostRewriteSpecifier == nil {
		ra.Route.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: reqOps.authority}
	}

	if f := translateFault(rule.GetFault()); f != nil {
		setPerFilter(out, FaultFilterName, util.MessageToAny(f))
	}
	if c := translateCORS(rule.GetCorsPolicy()); c != nil {
		setPerFilter(out, CORSFilterName, util.MessageToAny(c))
	}
	out.Metadata = t.metadata()
	return out
}

func setPerFilter(r *route.Route, name string, a *anypb.Any) {
	if r.TypedPerFilterConfig == nil {
		r.TypedPerFilterConfig = map[string]*anypb.Any{}
	}
	r.TypedPerFilterConfig[name] = a
}

// metadata names the VirtualService a route came from, as Istio does ("istio" filter metadata, key "config"),
// so config dumps and access logs can be traced back to it.
func (t *translator) metadata() *core.Metadata {
	path := "/apis/networking.istio.io/v1alpha3/namespaces/" + t.vs.Config.Namespace + "/virtual-service/" + t.vs.Config.Name
	return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{
		"istio": {Fields: map[string]*structpb.Value{"config": structpb.NewStringValue(path)}},
	}}
}

// routeAction builds the forwarding action of a rule; destination headers of a single destination go onto
// the route (out).
func (t *translator) routeAction(rule *networking.HTTPRoute, out *route.Route) *route.RouteAction {
	action := &route.RouteAction{Timeout: durationpb.New(0)}
	if rule.GetTimeout() != nil {
		action.Timeout = rule.GetTimeout()
	}
	if t.grpc() {
		// grpc-go reads the timeout only from max_stream_duration; 0 means none, like the Envoy default.
		action.MaxStreamDuration = &route.RouteAction_MaxStreamDuration{MaxStreamDuration: action.Timeout}
	}

	var dests []*networking.HTTPRouteDestination
	for _, d := range rule.GetRoute() {
		if d.GetDestination().GetHost() == "" {
			continue
		}
		if len(rule.GetRoute()) > 1 && d.GetWeight() <= 0 {
			continue // a weight of 0 among several destinations receives no traffic
		}
		dests = append(dests, d)
	}
	if len(dests) == 0 {
		t.logDrop(rule, "no destination with a host and a positive weight")
		return nil
	}
	var destinations []*networking.Destination
	if len(dests) == 1 {
		d := dests[0]
		action.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: t.clusterFor(d.GetDestination())}
		destinations = append(destinations, d.GetDestination())
		if !t.grpc() {
			req := translateHeaderOps(d.GetHeaders().GetRequest(), true)
			resp := translateHeaderOps(d.GetHeaders().GetResponse(), false)
			out.RequestHeadersToAdd = append(out.RequestHeadersToAdd, req.add...)
			out.RequestHeadersToRemove = append(out.RequestHeadersToRemove, req.remove...)
			out.ResponseHeadersToAdd = append(out.ResponseHeadersToAdd, resp.add...)
			out.ResponseHeadersToRemove = append(out.ResponseHeadersToRemove, resp.remove...)
			if req.authority != "" {
				action.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: req.authority}
			}
		}
	} else {
		wc := &route.WeightedCluster{}
		for _, d := range dests {
			cw := &route.WeightedCluster_ClusterWeight{
				Name:   t.clusterFor(d.GetDestination()),
				Weight: wrapperspb.UInt32(uint32(d.GetWeight())),
			}
			if !t.grpc() {
				req := translateHeaderOps(d.GetHeaders().GetRequest(), true)
				resp := translateHeaderOps(d.GetHeaders().GetResponse(), false)
				cw.RequestHeadersToAdd, cw.RequestHeadersToRemove = req.add, req.remove
				cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove = resp.add, resp.remove
				if req.authority != "" {
					cw.HostRewriteSpecifier = &route.WeightedCluster_ClusterWeight_HostRewriteLiteral{HostRewriteLiteral: req.authority}
				}
			}
			wc.Clusters = append(wc.Clusters, cw)
			destinations = append(destinations, d.GetDestination())
		}
		action.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
	}

	action.HashPolicy = t.hashPolicy(destinations)
	action.RetryPolicy = retryPolicy(rule.GetRetries(), len(action.HashPolicy) > 0, t.flavor)

	if !t.grpc() {
		if rw := rule.GetRewrite(); rw != nil {
			switch {
			case rw.GetUriRegexRewrite() != nil && rw.GetUriRegexRewrite().GetMatch() != "" && validRegex(rw.GetUriRegexRewrite().GetMatch()):
				action.RegexRewrite = &matcher.RegexMatchAndSubstitute{
					Pattern:      &matcher.RegexMatcher{Regex: rw.GetUriRegexRewrite().GetMatch()},
					Substitution: rw.GetUriRegexRewrite().GetRewrite(),
				}
			case rw.GetUri() != "":
				action.PrefixRewrite = rw.GetUri()
			}
			if rw.GetAuthority() != "" {
				action.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: rw.GetAuthority()}
			}
		}
		action.RequestMirrorPolicies = t.mirrors(rule)
	} else if rule.GetRewrite() != nil {
		t.logDrop(rule, "grpc-go does not support rewrites (rewrite ignored, route kept)")
	}
	return action
}

// clusterFor names the outbound cluster of a destination.
func (t *translator) clusterFor(d *networking.Destination) string {
	name, _, _ := DestinationCluster(t.push, t.vs.Config.Namespace, d, t.port)
	return name
}

// DestinationCluster resolves a VirtualService destination (host relative to the VirtualService's namespace)
// to its outbound cluster name, hostname and port. The port is destination.port.number, else the only port of
// the destination service, else the port being routed.
func DestinationCluster(push *model.PushContext, vsNamespace string, d *networking.Destination, routedPort int) (cluster, host string, port int) {
	host = model.ResolveHostname(d.GetHost(), vsNamespace, push.Domain)
	port = routedPort
	switch {
	case d.GetPort().GetNumber() != 0:
		port = int(d.GetPort().GetNumber())
	default:
		if svc := push.ServiceByHostname(host); svc != nil && len(svc.Ports) == 1 {
			port = svc.Ports[0].Port
		}
	}
	return model.BuildSubsetKey(model.Outbound, d.GetSubset(), host, port), host, port
}

func (t *translator) redirect(r *networking.HTTPRedirect) *route.RedirectAction {
	out := &route.RedirectAction{HostRedirect: r.GetAuthority()}
	switch {
	case r.GetUri() != "":
		out.PathRewriteSpecifier = &route.RedirectAction_PathRedirect{PathRedirect: r.GetUri()}
	case r.GetPrefixRewrite() != "":
		out.PathRewriteSpecifier = &route.RedirectAction_PrefixRewrite{PrefixRewrite: r.GetPrefixRewrite()}
	}
	if r.GetScheme() != "" {
		out.SchemeRewriteSpecifier = &route.RedirectAction_SchemeRedirect{SchemeRedirect: r.GetScheme()}
	}
	switch p := r.GetRedirectPort().(type) {
	case *networking.HTTPRedirect_Port:
		out.PortRedirect = p.Port
	case *networking.HTTPRedirect_DerivePort:
		// Envoy cannot derive the port from the request, but routes are built for one port: use it. The
		// protocol default needs no port at all.
		if p.DerivePort == networking.HTTPRedirect_FROM_REQUEST_PORT {
			out.PortRedirect = uint32(t.port)
		}
	}
	switch r.GetRedirectCode() {
	case 0, 301:
		out.ResponseCode = route.RedirectAction_MOVED_PERMANENTLY
	case 302:
		out.ResponseCode = route.RedirectAction_FOUND
	case 303:
		out.ResponseCode = route.RedirectAction_SEE_OTHER
	case 307:
		out.ResponseCode = route.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		out.ResponseCode = route.RedirectAction_PERMANENT_REDIRECT
	default:
		slog.Debug("VirtualService redirect code not supported by Envoy, using 301",
			"virtualservice", t.vs.Config.Namespace+"/"+t.vs.Config.Name, "code", r.GetRedirectCode())
	}
	return out
}

// translateMatch turns one match block into an Envoy route match (uri, headers, method, authority, scheme,
// query parameters; withoutHeaders as inverted header matchers).
func translateMatch(m *networking.HTTPMatchRequest) *route.RouteMatch {
	out := &route.RouteMatch{}
	switch u := m.GetUri().GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		out.PathSpecifier = &route.RouteMatch_Path{Path: u.Exact}
	case *networking.StringMatch_Prefix:
		out.PathSpecifier = &route.RouteMatch_Prefix{Prefix: u.Prefix}
	case *networking.StringMatch_Regex:
		re := u.Regex
		if m.GetIgnoreUriCase() {
			// case_sensitive does not apply to safe_regex.
			re = "(?i)" + re
		}
		out.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: re}}
	default:
		out.PathSpecifier = &route.RouteMatch_Prefix{Prefix: "/"}
	}
	if m.GetIgnoreUriCase() {
		out.CaseSensitive = wrapperspb.Bool(false)
	}
	for _, name := range model.SortedKeys(m.GetHeaders()) {
		out.Headers = append(out.Headers, headerMatcher(name, m.GetHeaders()[name], false))
	}
	for _, name := range model.SortedKeys(m.GetWithoutHeaders()) {
		out.Headers = append(out.Headers, headerMatcher(name, m.GetWithoutHeaders()[name], true))
	}
	if m.GetMethod() != nil {
		out.Headers = append(out.Headers, headerMatcher(":method", m.GetMethod(), false))
	}
	if m.GetAuthority() != nil {
		out.Headers = append(out.Headers, headerMatcher(":authority", m.GetAuthority(), false))
	}
	if m.GetScheme() != nil {
		out.Headers = append(out.Headers, headerMatcher(":scheme", m.GetScheme(), false))
	}
	for _, name := range model.SortedKeys(m.GetQueryParams()) {
		qm := &route.QueryParameterMatcher{Name: name}
		if sm := stringMatcher(m.GetQueryParams()[name]); sm != nil {
			qm.QueryParameterMatchSpecifier = &route.QueryParameterMatcher_StringMatch{StringMatch: sm}
		} else {
			qm.QueryParameterMatchSpecifier = &route.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		}
		out.QueryParameters = append(out.QueryParameters, qm)
	}
	return out
}

// headerMatcher matches a header by its lower-case name: Envoy and grpc-go compare lower-cased names (grpc-go
// never matches a name with capitals).
func headerMatcher(name string, sm *networking.StringMatch, invert bool) *route.HeaderMatcher {
	out := &route.HeaderMatcher{Name: strings.ToLower(name), InvertMatch: invert}
	if m := stringMatcher(sm); m != nil {
		out.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: m}
	} else {
		out.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
	}
	return out
}

// stringMatcher converts an Istio StringMatch; nil means "present" (the empty match {}, an empty prefix, or a
// match-all regex), as Istio treats them.
func stringMatcher(sm *networking.StringMatch) *matcher.StringMatcher {
	switch m := sm.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: m.Exact}}
	case *networking.StringMatch_Prefix:
		if m.Prefix == "" {
			return nil
		}
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: m.Prefix}}
	case *networking.StringMatch_Regex:
		if m.Regex == "" || m.Regex == "*" || m.Regex == ".*" {
			return nil
		}
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: m.Regex}}}
	}
	return nil
}

// invalidRegex returns the first regex of a match block that is not valid RE2 (Envoy's and grpc-go's regex
// dialect, which Go's regexp implements), or "". One invalid regex makes Envoy and grpc-go reject the whole
// route configuration, so such match blocks are dropped instead.
func invalidRegex(m *networking.HTTPMatchRequest) string {
	check := func(sm *networking.StringMatch) string {
		if re, ok := sm.GetMatchType().(*networking.StringMatch_Regex); ok && stringMatcher(sm) != nil {
			if _, err := regexp.Compile(re.Regex); err != nil {
				return re.Regex
			}
		}
		return ""
	}
	for _, sm := range []*networking.StringMatch{m.GetUri(), m.GetMethod(), m.GetAuthority(), m.GetScheme()} {
		if bad := check(sm); bad != "" {
			return bad
		}
	}
	for _, group := range []map[string]*networking.StringMatch{m.GetHeaders(), m.GetWithoutHeaders(), m.GetQueryParams()} {
		for _, sm := range group {
			if bad := check(sm); bad != "" {
				return bad
			}
		}
	}
	return ""
}

// validRegex reports whether s is valid RE2.
func validRegex(s string) bool {
	_, err := regexp.Compile(s)
	return err == nil
}

// isCatchAllMatch reports whether a match block matches every request: no conditions but a "/" prefix (or a
// match-all regex) on the uri.
func isCatchAllMatch(m *networking.HTTPMatchRequest) bool {
	if len(m.GetHeaders())+len(m.GetWithoutHeaders())+len(m.GetQueryParams()) > 0 ||
		m.GetMethod() != nil || m.GetAuthority() != nil || m.GetScheme() != nil {
		return false
	}
	switch u := m.GetUri().GetMatchType().(type) {
	case nil:
		return true
	case *networking.StringMatch_Prefix:
		return u.Prefix == "/" || u.Prefix == ""
	case *networking.StringMatch_Regex:
		return u.Regex == "*" || u.Regex == ".*"
	}
	return false
}

// headerOps is a translated header operation block.
type headerOps struct {
	add    []*core.HeaderValueOption
	remove []string
	// authority is a request "set"/"add" of :authority or host, which Envoy expresses as a host rewrite.
	authority string
}

// translateHeaderOps converts set (overwrite) and add (append) operations and removals. Envoy rejects
// modifications of pseudo-headers and host, so those are dropped (the authority becomes a rewrite instead).
func translateHeaderOps(ops *networking.Headers_HeaderOperations, request bool) headerOps {
	var out headerOps
	if ops == nil {
		return out
	}
	emit := func(m map[string]string, action core.HeaderValueOption_HeaderAppendAction) {
		for _, k := range model.SortedKeys(m) {
			lk := strings.ToLower(k)
			if request && (lk == ":authority" || lk == "host") {
				out.authority = m[k]
				continue
			}
			if strings.HasPrefix(k, ":") || lk == "host" || k == "" {
				continue
			}
			out.add = append(out.add, &core.HeaderValueOption{
				Header:       &core.HeaderValue{Key: k, Value: m[k]},
				AppendAction: action,
			})
		}
	}
	emit(ops.GetSet(), core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)
	emit(ops.GetAdd(), core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD)
	for _, k := range ops.GetRemove() {
		if k == "" || strings.HasPrefix(k, ":") || strings.EqualFold(k, "host") {
			continue
		}
		out.remove = append(out.remove, k)
	}
	return out
}
