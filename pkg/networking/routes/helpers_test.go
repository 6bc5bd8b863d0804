package routes_test

import (
	"slices"
	"testing"
	"time"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/routes/routestest"
	"github.com/meshd/meshd/pkg/networking/util"
)

const (
	reviewsFQDN = "reviews.default.svc.cluster.local"
	ratingsFQDN = "ratings.default.svc.cluster.local"
)

// generate runs the RDS generator for the names and returns the decoded, deeply validated route configs.
func generate(t *testing.T, g *routes.Generator, proxy *model.Proxy, push *model.PushContext, names ...string) []*route.RouteConfiguration {
	t.Helper()
	res, err := g.Generate(proxy, push, &model.WatchedResource{TypeURL: model.RouteType, Names: names}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out []*route.RouteConfiguration
	for _, r := range res {
		rc := &route.RouteConfiguration{}
		if err := r.GetResource().UnmarshalTo(rc); err != nil {
			t.Fatal(err)
		}
		if r.GetName() != rc.GetName() {
			t.Errorf("resource name %q != route config name %q", r.GetName(), rc.GetName())
		}
		if err := routestest.ValidateDeep(rc); err != nil {
			t.Errorf("route config %s invalid: %v", rc.GetName(), err)
		}
		assertUniqueDomains(t, rc)
		out = append(out, rc)
	}
	return out
}

// routeConfig generates one route configuration without cache.
func routeConfig(t *testing.T, proxy *model.Proxy, push *model.PushContext, name string) *route.RouteConfiguration {
	t.Helper()
	rcs := generate(t, routes.NewGenerator(nil), proxy, push, name)
	if len(rcs) != 1 {
		t.Fatalf("route config %q: got %d resources", name, len(rcs))
	}
	return rcs[0]
}

func assertUniqueDomains(t *testing.T, rc *route.RouteConfiguration) {
	t.Helper()
	seen := map[string]string{}
	for _, vh := range rc.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			if prev, dup := seen[d]; dup {
				t.Errorf("route config %s: domain %q in both %q and %q", rc.GetName(), d, prev, vh.GetName())
			}
			seen[d] = vh.GetName()
		}
	}
}

func vhost(t *testing.T, rc *route.RouteConfiguration, name string) *route.VirtualHost {
	t.Helper()
	for _, vh := range rc.GetVirtualHosts() {
		if vh.GetName() == name {
			return vh
		}
	}
	t.Fatalf("route config %s: no virtual host %q (have %v)", rc.GetName(), name, vhostNames(rc))
	return nil
}

func vhostNames(rc *route.RouteConfiguration) []string {
	var out []string
	for _, vh := range rc.GetVirtualHosts() {
		out = append(out, vh.GetName())
	}
	return out
}

func hasVhost(rc *route.RouteConfiguration, name string) bool {
	return slices.Contains(vhostNames(rc), name)
}

func action(t *testing.T, r *route.Route) *route.RouteAction {
	t.Helper()
	a := r.GetRoute()
	if a == nil {
		t.Fatalf("route %q has no route action: %v", r.GetName(), r.GetAction())
	}
	return a
}

func assertProto(t *testing.T, what string, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("%s:\n got: %v\nwant: %v", what, got, want)
	}
}

// bookinfoPush is the Bookinfo mesh with extra configs.
func bookinfoPush(configs ...*model.Config) *model.PushContext {
	services, pods := routestest.Bookinfo()
	return routestest.Push(services, pods, configs, nil)
}

func vsConfig(name string, spec *networking.VirtualService) *model.Config {
	return routestest.Config(model.KindVirtualService, "default", name, spec)
}

func dest(host, subset string) *networking.Destination {
	return &networking.Destination{Host: host, Subset: subset}
}

func routeTo(host, subset string, weight int32) *networking.HTTPRouteDestination {
	return &networking.HTTPRouteDestination{Destination: dest(host, subset), Weight: weight}
}

func exact(s string) *networking.StringMatch {
	return &networking.StringMatch{MatchType: &networking.StringMatch_Exact{Exact: s}}
}

func prefix(s string) *networking.StringMatch {
	return &networking.StringMatch{MatchType: &networking.StringMatch_Prefix{Prefix: s}}
}

func regex(s string) *networking.StringMatch {
	return &networking.StringMatch{MatchType: &networking.StringMatch_Regex{Regex: s}}
}

func seconds(s int64) *durationpb.Duration { return durationpb.New(time.Duration(s) * time.Second) }

// anyOf packs a message as the generators do.
var anyOf = util.MessageToAny
