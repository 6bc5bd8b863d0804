package routes

import (
	"net/http"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	corsfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	previoushosts "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	envoytype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// DefaultRetryOn is Istio's retry condition when a route has no retry policy of its own.
const DefaultRetryOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"

// previousHostsPredicate is marshalled once: it is the same for every route.
var previousHostsPredicate = &route.RetryPolicy_RetryHostPredicate{
	Name:       "envoy.retry_host_predicates.previous_hosts",
	ConfigType: &route.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: util.MessageToAny(&previoushosts.PreviousHostsPredicate{})},
}

// DefaultRetryPolicy is Istio's policy for routes without VirtualService retries: two retries on connection
// failures, refused streams, 503, and the gRPC unavailable/cancelled statuses, each on another host. With a
// consistent-hash policy the host predicate is left out: retries must be allowed to land on the same host.
func DefaultRetryPolicy(consistentHash bool) *route.RetryPolicy {
	p := &route.RetryPolicy{
		RetryOn:              DefaultRetryOn,
		NumRetries:           wrapperspb.UInt32(2),
		RetriableStatusCodes: []uint32{http.StatusServiceUnavailable},
	}
	if !consistentHash {
		p.RetryHostPredicate = []*route.RetryPolicy_RetryHostPredicate{previousHostsPredicate}
		p.HostSelectionRetryMaxAttempts = 5
	}
	return p
}

// retryPolicy translates VirtualService retries: unset means the default policy for sidecars (none for gRPC,
// whose retries are opt-in), attempts 0 means no retries.
func retryPolicy(in *networking.HTTPRetry, consistentHash bool, flavor Flavor) *route.RetryPolicy {
	if in == nil {
		if flavor == GRPC {
			return nil
		}
		return DefaultRetryPolicy(consistentHash)
	}
	if in.GetAttempts() <= 0 {
		return nil
	}
	p := DefaultRetryPolicy(consistentHash)
	p.NumRetries = wrapperspb.UInt32(uint32(in.GetAttempts()))
	if in.GetRetryOn() != "" {
		p.RetryOn, p.RetriableStatusCodes = parseRetryOn(in.GetRetryOn())
	}
	if in.GetBackoff() != nil && in.GetBackoff().AsDuration() > 0 {
		p.RetryBackOff = &route.RetryPolicy_RetryBackOff{BaseInterval: in.GetBackoff()}
	}
	if flavor == GRPC {
		// grpc-go implements retry_on (its status names), num_retries and back-off; the rest is Envoy's.
		return &route.RetryPolicy{RetryOn: p.RetryOn, NumRetries: p.NumRetries, RetryBackOff: p.RetryBackOff}
	}
	if in.GetPerTryTimeout() != nil {
		p.PerTryTimeout = in.GetPerTryTimeout()
	}
	if in.GetRetryIgnorePreviousHosts() != nil && !in.GetRetryIgnorePreviousHosts().GetValue() {
		p.RetryHostPredicate = nil
		p.HostSelectionRetryMaxAttempts = 0
	}
	return p
}

// parseRetryOn splits Istio's retryOn into Envoy conditions and retriable status codes ("503,connect-failure"
// → "connect-failure,retriable-status-codes" + [503]).
func parseRetryOn(s string) (string, []uint32) {
	var conds []string
	var codes []uint32
	hasRetriable := false
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if n, err := strconv.Atoi(part); err == nil && http.StatusText(n) != "" {
			codes = append(codes, uint32(n))
			continue
		}
		if part == "retriable-status-codes" {
			hasRetriable = true
		}
		conds = append(conds, part)
	}
	if len(codes) > 0 && !hasRetriable {
		conds = append(conds, "retriable-status-codes")
	}
	return strings.Join(conds, ","), codes
}

// hashPolicy derives the route's hash policy from the DestinationRules of its destinations (the port-level
// and subset load balancer settings override the top-level ones). Several destinations share a policy only
// when they all agree; otherwise there is none.
func (t *translator) hashPolicy(dests []*networking.Destination) []*route.RouteAction_HashPolicy {
	var out *route.RouteAction_HashPolicy
	for i, d := range dests {
		_, host, port := DestinationCluster(t.push, t.vs.Config.Namespace, d, t.port)
		hp := hashPolicyFor(t.push, t.proxy.Namespace, host, d.GetSubset(), port, t.flavor)
		if i == 0 {
			out = hp
			continue
		}
		if !proto.Equal(out, hp) {
			return nil
		}
	}
	if out == nil {
		return nil
	}
	return []*route.RouteAction_HashPolicy{out}
}

// hashPolicyFor returns the Envoy hash policy for traffic from a proxy in proxyNS to host:port (and subset),
// from the consistentHash load balancer setting of the DestinationRule that applies, or nil.
func hashPolicyFor(push *model.PushContext, proxyNS, host, subset string, port int, flavor Flavor) *route.RouteAction_HashPolicy {
	dr := push.DestinationRule(proxyNS, host)
	if dr == nil {
		return nil
	}
	lb := loadBalancerFor(dr.Spec.GetTrafficPolicy(), port)
	if subset != "" {
		for _, s := range dr.Spec.GetSubsets() {
			if s.GetName() == subset && s.GetTrafficPolicy() != nil {
				if sl := loadBalancerFor(s.GetTrafficPolicy(), port); sl != nil {
					lb = sl
				}
			}
		}
	}
	ch := lb.GetConsistentHash()
	if ch == nil {
		return nil
	}
	switch k := ch.GetHashKey().(type) {
	case *networking.LoadBalancerSettings_ConsistentHashLB_HttpHeaderName:
		if k.HttpHeaderName == "" {
			return nil
		}
		return &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_Header_{
			Header: &route.RouteAction_HashPolicy_Header{HeaderName: k.HttpHeaderName}}}
	case *networking.LoadBalancerSettings_ConsistentHashLB_UseSourceIp:
		if !k.UseSourceIp {
			return nil
		}
		if flavor == GRPC {
			// grpc-go has no connection properties; hashing on its channel id is the per-client equivalent.
			return &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_FilterState_{
				FilterState: &route.RouteAction_HashPolicy_FilterState{Key: "io.grpc.channel_id"}}}
		}
		return &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_ConnectionProperties_{
			ConnectionProperties: &route.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}
	case *networking.LoadBalancerSettings_ConsistentHashLB_HttpCookie:
		if flavor == GRPC || k.HttpCookie.GetName() == "" {
			return nil
		}
		c := &route.RouteAction_HashPolicy_Cookie{Name: k.HttpCookie.GetName(), Path: k.HttpCookie.GetPath(), Ttl: k.HttpCookie.GetTtl()}
		for _, a := range k.HttpCookie.GetAttributes() {
			if a.GetName() == "" {
				continue
			}
			c.Attributes = append(c.Attributes, &route.RouteAction_HashPolicy_CookieAttribute{Name: a.GetName(), Value: a.GetValue()})
		}
		return &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_Cookie_{Cookie: c}}
	case *networking.LoadBalancerSettings_ConsistentHashLB_HttpQueryParameterName:
		if flavor == GRPC || k.HttpQueryParameterName == "" {
			return nil
		}
		return &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_QueryParameter_{
			QueryParameter: &route.RouteAction_HashPolicy_QueryParameter{Name: k.HttpQueryParameterName}}}
	}
	return nil
}

// loadBalancerFor returns the load balancer settings for a port: the port-level ones when given, else the
// policy-wide ones.
func loadBalancerFor(tp *networking.TrafficPolicy, port int) *networking.LoadBalancerSettings {
	lb := tp.GetLoadBalancer()
	for _, pl := range tp.GetPortLevelSettings() {
		if int(pl.GetPort().GetNumber()) == port && pl.GetLoadBalancer() != nil {
			lb = pl.GetLoadBalancer()
		}
	}
	return lb
}

// percent converts an Istio percentage (0-100, fractional) to Envoy's per-million fraction.
func percent(p *networking.Percent) *envoytype.FractionalPercent {
	v := p.GetValue()
	if v < 0 {
		v = 0
	}
	if v > 100 {
		v = 100
	}
	return &envoytype.FractionalPercent{Numerator: uint32(v * 10000), Denominator: envoytype.FractionalPercent_MILLION}
}

var fullPercent = &envoytype.FractionalPercent{Numerator: 100, Denominator: envoytype.FractionalPercent_HUNDRED}

// translateFault converts fault injection into the per-route config of the fault filter, or nil when it
// holds nothing Envoy can do (exponential delays, HTTP/2 errors and invalid statuses are dropped).
func translateFault(in *networking.HTTPFaultInjection) *faultfilter.HTTPFault {
	if in == nil {
		return nil
	}
	out := &faultfilter.HTTPFault{}
	if d := in.GetDelay(); d != nil && d.GetFixedDelay() != nil {
		fd := &faultcommon.FaultDelay{
			FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: d.GetFixedDelay()},
			Percentage:         fullPercent,
		}
		switch {
		case d.GetPercentage() != nil:
			fd.Percentage = percent(d.GetPercentage())
		case d.GetPercent() > 0: //nolint:staticcheck // deprecated integer percent, still accepted by Istio
			fd.Percentage = &envoytype.FractionalPercent{Numerator: uint32(d.GetPercent()), Denominator: envoytype.FractionalPercent_HUNDRED} //nolint:staticcheck
		}
		out.Delay = fd
	}
	if a := in.GetAbort(); a != nil {
		fa := &faultfilter.FaultAbort{Percentage: fullPercent}
		if a.GetPercentage() != nil {
			fa.Percentage = percent(a.GetPercentage())
		}
		switch e := a.GetErrorType().(type) {
		case *networking.HTTPFaultInjection_Abort_HttpStatus:
			if e.HttpStatus >= 200 && e.HttpStatus < 600 {
				fa.ErrorType = &faultfilter.FaultAbort_HttpStatus{HttpStatus: uint32(e.HttpStatus)}
			}
		case *networking.HTTPFaultInjection_Abort_GrpcStatus:
			if code, ok := grpcCodes[strings.ToUpper(e.GrpcStatus)]; ok {
				fa.ErrorType = &faultfilter.FaultAbort_GrpcStatus{GrpcStatus: code}
			}
		}
		if fa.ErrorType != nil {
			out.Abort = fa
		}
	}
	if out.Delay == nil && out.Abort == nil {
		return nil
	}
	return out
}

// grpcCodes maps gRPC status names, as Istio's grpcStatus accepts them, to their codes.
var grpcCodes = map[string]uint32{
	"OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
	"ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
	"ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
	"DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

// translateCORS converts a CORS policy into the per-route config of the CORS filter.
func translateCORS(in *networking.CorsPolicy) *corsfilter.CorsPolicy {
	if in == nil {
		return nil
	}
	out := &corsfilter.CorsPolicy{
		AllowMethods:     strings.Join(in.GetAllowMethods(), ","),
		AllowHeaders:     strings.Join(in.GetAllowHeaders(), ","),
		ExposeHeaders:    strings.Join(in.GetExposeHeaders(), ","),
		AllowCredentials: in.GetAllowCredentials(),
		FilterEnabled:    &core.RuntimeFractionalPercent{DefaultValue: fullPercent},
	}
	if in.GetMaxAge() != nil {
		out.MaxAge = strconv.FormatInt(int64(in.GetMaxAge().AsDuration().Seconds()), 10)
	}
	for _, o := range in.GetAllowOrigin() { //nolint:staticcheck // deprecated exact origins
		out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: o}})
	}
	for _, o := range in.GetAllowOrigins() {
		if re, ok := o.GetMatchType().(*networking.StringMatch_Regex); ok && !validRegex(re.Regex) {
			continue
		}
		if sm := stringMatcher(o); sm != nil {
			out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, sm)
		}
	}
	switch in.GetUnmatchedPreflights() {
	case networking.CorsPolicy_FORWARD:
		out.ForwardNotMatchingPreflights = wrapperspb.Bool(true)
	case networking.CorsPolicy_IGNORE:
		out.ForwardNotMatchingPreflights = wrapperspb.Bool(false)
	}
	return out
}

// mirrors converts mirror/mirrorPercentage (or the deprecated mirrorPercent) and the mirrors list into request
// mirror policies.
func (t *translator) mirrors(rule *networking.HTTPRoute) []*route.RouteAction_RequestMirrorPolicy {
	var out []*route.RouteAction_RequestMirrorPolicy
	add := func(d *networking.Destination, frac *envoytype.FractionalPercent) {
		if d.GetHost() == "" {
			return
		}
		out = append(out, &route.RouteAction_RequestMirrorPolicy{
			Cluster:         t.clusterFor(d),
			RuntimeFraction: &core.RuntimeFractionalPercent{DefaultValue: frac},
		})
	}
	if m := rule.GetMirror(); m != nil {
		frac := fullPercent
		switch {
		case rule.GetMirrorPercentage() != nil:
			frac = percent(rule.GetMirrorPercentage())
		case rule.GetMirrorPercent() != nil: //nolint:staticcheck // deprecated integer percent
			frac = &envoytype.FractionalPercent{Numerator: rule.GetMirrorPercent().GetValue(), Denominator: envoytype.FractionalPercent_HUNDRED} //nolint:staticcheck
		}
		add(m, frac)
	}
	for _, mp := range rule.GetMirrors() {
		frac := fullPercent
		if mp.GetPercentage() != nil {
			frac = percent(mp.GetPercentage())
		}
		add(mp.GetDestination(), frac)
	}
	return out
}
