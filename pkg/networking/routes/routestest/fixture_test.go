package routestest

import (
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/pkg/networking/util"
)

// ValidateDeep must see into Any, which ValidateAll alone does not: otherwise the generators' "every resource
// validates" tests would pass with invalid filter configs.
func TestValidateDeepLooksInsideAny(t *testing.T) {
	wrap := func(a *anypb.Any) *route.RouteConfiguration {
		return &route.RouteConfiguration{VirtualHosts: []*route.VirtualHost{{
			Name: "vh", Domains: []string{"*"},
			Routes: []*route.Route{{
				Match:                &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action:               &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: "c"}}},
				TypedPerFilterConfig: map[string]*anypb.Any{"f": a},
			}},
		}}}
	}
	valid := wrap(util.MessageToAny(&faultfilter.HTTPFault{Abort: &faultfilter.FaultAbort{ErrorType: &faultfilter.FaultAbort_HttpStatus{HttpStatus: 503}}}))
	if err := ValidateDeep(valid); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	invalid := wrap(util.MessageToAny(&faultfilter.HTTPFault{Abort: &faultfilter.FaultAbort{ErrorType: &faultfilter.FaultAbort_HttpStatus{HttpStatus: 100}}}))
	if invalid.ValidateAll() != nil {
		t.Fatal("test premise: ValidateAll should not see the nested error")
	}
	if err := ValidateDeep(invalid); err == nil {
		t.Error("invalid abort status inside Any accepted")
	}
	unknown := wrap(&anypb.Any{TypeUrl: "type.googleapis.com/no.such.Type"})
	if err := ValidateDeep(unknown); err == nil {
		t.Error("unregistered type inside Any accepted")
	}
}
