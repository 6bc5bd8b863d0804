package validation

import (
	"slices"
	"strings"

	networking "istio.io/api/networking/v1alpha3"
)

func (v *validator) virtualService(vs *networking.VirtualService) {
	toMesh := len(vs.Gateways) == 0 || slices.Contains(vs.Gateways, "mesh")
	if len(vs.Hosts) == 0 {
		v.errf("hosts", "at least one host is required")
	}
	for i, h := range vs.Hosts {
		if h == "*" && toMesh {
			v.errf(idx("hosts", i), `host "*" is only allowed for VirtualServices bound to gateways (not "mesh")`)
			continue
		}
		v.host(idx("hosts", i), h, true)
	}
	for i, g := range vs.Gateways {
		v.gatewayRef(idx("gateways", i), g)
	}
	if len(vs.Http) == 0 && len(vs.Tcp) == 0 && len(vs.Tls) == 0 {
		v.errf("", "at least one of http, tcp or tls routes is required")
	}
	v.exportTo("exportTo", vs.ExportTo)
	for i, r := range vs.Http {
		v.httpRoute(idx("http", i), r)
	}
	for i, r := range vs.Tcp {
		p := idx("tcp", i)
		for j, m := range r.Match {
			mp := idx(join(p, "match"), j)
			if m.Port != 0 {
				v.port(join(mp, "port"), m.Port)
			}
			for k, s := range m.DestinationSubnets {
				v.ipOrCIDR(idx(join(mp, "destinationSubnets"), k), s)
			}
			if m.SourceSubnet != "" {
				v.ipOrCIDR(join(mp, "sourceSubnet"), m.SourceSubnet)
			}
			for k, g := range m.Gateways {
				v.gatewayRef(idx(join(mp, "gateways"), k), g)
			}
		}
		v.routeDestinations(join(p, "route"), r.Route)
	}
	for i, r := range vs.Tls {
		p := idx("tls", i)
		if len(r.Match) == 0 {
			v.errf(join(p, "match"), "TLS routes need at least one match (with sniHosts)")
		}
		for j, m := range r.Match {
			mp := idx(join(p, "match"), j)
			if len(m.SniHosts) == 0 {
				v.errf(join(mp, "sniHosts"), "at least one SNI host is required")
			}
			for k, h := range m.SniHosts {
				v.host(idx(join(mp, "sniHosts"), k), h, true)
			}
			if m.Port != 0 {
				v.port(join(mp, "port"), m.Port)
			}
			for k, s := range m.DestinationSubnets {
				v.ipOrCIDR(idx(join(mp, "destinationSubnets"), k), s)
			}
			for k, g := range m.Gateways {
				v.gatewayRef(idx(join(mp, "gateways"), k), g)
			}
		}
		v.routeDestinations(join(p, "route"), r.Route)
	}
}

// gatewayRef checks a gateway reference: "mesh", "name" or "namespace/name".
func (v *validator) gatewayRef(path, g string) {
	if g == "mesh" {
		return
	}
	ns, name, qualified := strings.Cut(g, "/")
	if !qualified {
		ns, name = "", g
	}
	if qualified && !isDNSLabel(ns) || !isDNSName(name) {
		v.errf(path, "%q is not a gateway reference (\"mesh\", \"name\" or \"namespace/name\")", g)
	}
}

func (v *validator) httpRoute(path string, r *networking.HTTPRoute) {
	actions := 0
	for _, set := range []bool{len(r.Route) > 0, r.Redirect != nil, r.DirectResponse != nil, r.Delegate != nil} {
		if set {
			actions++
		}
	}
	switch {
	case actions == 0:
		v.errf(path, "needs one of route, redirect, directResponse or delegate")
	case actions > 1:
		v.errf(path, "route, redirect, directResponse and delegate are mutually exclusive")
	}
	for i, m := range r.Match {
		v.httpMatch(idx(join(path, "match"), i), m)
	}
	if len(r.Route) > 0 {
		v.httpRouteDestinations(join(path, "route"), r.Route)
	}
	if rd := r.Redirect; rd != nil {
		rp := join(path, "redirect")
		switch rd.RedirectCode {
		case 0, 301, 302, 303, 307, 308:
		default:
			v.errf(join(rp, "redirectCode"), "%d is not a redirect code (301, 302, 303, 307 or 308)", rd.RedirectCode)
		}
		if p, ok := rd.RedirectPort.(*networking.HTTPRedirect_Port); ok {
			v.port(join(rp, "port"), p.Port)
		}
		if dp, ok := rd.RedirectPort.(*networking.HTTPRedirect_DerivePort); ok {
			v.enum(join(rp, "derivePort"), dp.DerivePort)
		}
		if r.Rewrite != nil {
			v.errf(join(path, "rewrite"), "cannot be combined with redirect")
		}
	}
	if dr := r.DirectResponse; dr != nil {
		if dr.Status < 200 || dr.Status > 599 {
			v.errf(join(path, "directResponse.status"), "%d must be in 200..599", dr.Status)
		}
	}
	if d := r.Delegate; d != nil {
		if d.Name == "" {
			v.errf(join(path, "delegate.name"), "is required")
		}
	}
	if rw := r.Rewrite; rw != nil {
		rp := join(path, "rewrite")
		if rw.Uri != "" && rw.UriRegexRewrite != nil {
			v.errf(rp, "uri and uriRegexRewrite are mutually exclusive")
		}
		if rr := rw.UriRegexRewrite; rr != nil {
			if rr.Match == "" {
				v.errf(join(rp, "uriRegexRewrite.match"), "is required")
			} else {
				v.regex(join(rp, "uriRegexRewrite.match"), rr.Match)
			}
		}
	}
	v.duration(join(path, "timeout"), r.Timeout)
	if rt := r.Retries; rt != nil {
		rp := join(path, "retries")
		v.nonNegative(join(rp, "attempts"), rt.Attempts)
		v.duration(join(rp, "perTryTimeout"), rt.PerTryTimeout)
		v.duration(join(rp, "backoff"), rt.Backoff)
	}
	if f := r.Fault; f != nil {
		v.fault(join(path, "fault"), f)
	}
	if r.Mirror != nil {
		v.destination(join(path, "mirror"), r.Mirror)
	}
	if r.MirrorPercent != nil && r.MirrorPercent.Value > 100 {
		v.errf(join(path, "mirrorPercent"), "%d must be in 0..100", r.MirrorPercent.Value)
	}
	if r.MirrorPercentage != nil {
		v.percent(join(path, "mirrorPercentage.value"), r.MirrorPercentage.Value)
	}
	for i, m := range r.Mirrors {
		mp := idx(join(path, "mirrors"), i)
		if m.Destination == nil {
			v.errf(join(mp, "destination"), "is required")
		} else {
			v.destination(join(mp, "destination"), m.Destination)
		}
		if m.Percentage != nil {
			v.percent(join(mp, "percentage.value"), m.Percentage.Value)
		}
	}
	if c := r.CorsPolicy; c != nil {
		for i, o := range c.AllowOrigins {
			v.stringMatch(idx(join(path, "corsPolicy.allowOrigins"), i), o, false)
		}
	}
}

func (v *validator) httpMatch(path string, m *networking.HTTPMatchRequest) {
	single := map[string]*networking.StringMatch{"uri": m.Uri, "scheme": m.Scheme, "method": m.Method, "authority": m.Authority}
	for _, f := range []string{"uri", "scheme", "method", "authority"} {
		if single[f] != nil {
			v.stringMatch(join(path, f), single[f], false)
		}
	}
	for _, group := range []struct {
		name string
		m    map[string]*networking.StringMatch
	}{{"headers", m.Headers}, {"withoutHeaders", m.WithoutHeaders}, {"queryParams", m.QueryParams}} {
		for _, k := range sortedKeys(group.m) {
			p := key(join(path, group.name), k)
			if k == "" {
				v.errf(join(path, group.name), "name must not be empty")
				continue
			}
			if group.name != "queryParams" && k != strings.ToLower(k) {
				v.errf(p, "header names must be lowercase")
			}
			// An empty match ({}) on a header means "present".
			v.stringMatch(p, group.m[k], group.name != "queryParams")
		}
	}
	if m.Port != 0 {
		v.port(join(path, "port"), m.Port)
	}
	for i, g := range m.Gateways {
		v.gatewayRef(idx(join(path, "gateways"), i), g)
	}
}

func sortedKeys(m map[string]*networking.StringMatch) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// stringMatch checks exactly one of exact, prefix, regex is set (or none, for presence matches) and that a regex
// compiles with RE2, which is what Envoy uses.
func (v *validator) stringMatch(path string, m *networking.StringMatch, emptyOK bool) {
	if m == nil {
		if !emptyOK {
			v.errf(path, "must set one of exact, prefix or regex")
		}
		return
	}
	switch t := m.MatchType.(type) {
	case nil:
		if !emptyOK {
			v.errf(path, "must set one of exact, prefix or regex")
		}
	case *networking.StringMatch_Regex:
		v.regex(join(path, "regex"), t.Regex)
	}
}

// weights checks route weights: none negative, and when traffic is split, some destination gets traffic.
func (v *validator) weights(path string, weights []int32) {
	sum := int64(0)
	for i, w := range weights {
		if w < 0 {
			v.errf(idx(path, i), "weight must be >= 0, got %d", w)
		}
		sum += int64(w)
	}
	if len(weights) > 1 && sum <= 0 {
		v.errf(path, "weights of a split route must add up to more than 0")
	}
}

func (v *validator) httpRouteDestinations(path string, rds []*networking.HTTPRouteDestination) {
	weights := make([]int32, len(rds))
	for i, rd := range rds {
		weights[i] = rd.Weight
		if rd.Destination == nil {
			v.errf(join(idx(path, i), "destination"), "is required")
			continue
		}
		v.destination(join(idx(path, i), "destination"), rd.Destination)
	}
	v.weights(path, weights)
}

func (v *validator) routeDestinations(path string, rds []*networking.RouteDestination) {
	if len(rds) == 0 {
		v.errf(path, "at least one destination is required")
		return
	}
	weights := make([]int32, len(rds))
	for i, rd := range rds {
		weights[i] = rd.Weight
		if rd.Destination == nil {
			v.errf(join(idx(path, i), "destination"), "is required")
			continue
		}
		v.destination(join(idx(path, i), "destination"), rd.Destination)
	}
	v.weights(path, weights)
}

func (v *validator) destination(path string, d *networking.Destination) {
	if d.Host == "" {
		v.errf(join(path, "host"), "is required")
	} else {
		v.host(join(path, "host"), d.Host, false)
	}
	if d.Subset != "" && !isDNSLabel(d.Subset) {
		v.errf(join(path, "subset"), "%q is not a valid subset name (RFC 1123 label)", d.Subset)
	}
	if d.Port != nil {
		v.port(join(path, "port.number"), d.Port.Number)
	}
}

func (v *validator) fault(path string, f *networking.HTTPFaultInjection) {
	if f.Delay == nil && f.Abort == nil {
		v.errf(path, "needs delay or abort")
	}
	if d := f.Delay; d != nil {
		dp := join(path, "delay")
		if d.Percent < 0 || d.Percent > 100 {
			v.errf(join(dp, "percent"), "%d must be in 0..100", d.Percent)
		}
		if d.Percentage != nil {
			v.percent(join(dp, "percentage.value"), d.Percentage.Value)
		}
		switch t := d.HttpDelayType.(type) {
		case *networking.HTTPFaultInjection_Delay_FixedDelay:
			if t.FixedDelay == nil {
				v.errf(join(dp, "fixedDelay"), "is required")
			}
			v.duration(join(dp, "fixedDelay"), t.FixedDelay)
		case *networking.HTTPFaultInjection_Delay_ExponentialDelay:
			v.duration(join(dp, "exponentialDelay"), t.ExponentialDelay)
		default:
			v.errf(dp, "needs fixedDelay")
		}
	}
	if a := f.Abort; a != nil {
		ap := join(path, "abort")
		if a.Percentage != nil {
			v.percent(join(ap, "percentage.value"), a.Percentage.Value)
		}
		switch t := a.ErrorType.(type) {
		case *networking.HTTPFaultInjection_Abort_HttpStatus:
			if t.HttpStatus < 200 || t.HttpStatus > 599 {
				v.errf(join(ap, "httpStatus"), "%d must be in 200..599", t.HttpStatus)
			}
		case *networking.HTTPFaultInjection_Abort_GrpcStatus:
			if t.GrpcStatus == "" {
				v.errf(join(ap, "grpcStatus"), "must not be empty")
			}
		case *networking.HTTPFaultInjection_Abort_Http2Error:
			if t.Http2Error == "" {
				v.errf(join(ap, "http2Error"), "must not be empty")
			}
		default:
			v.errf(ap, "needs httpStatus or grpcStatus")
		}
	}
}
