// Package nds generates the DNS name table (NDS) that sidecar agents answer mesh hostnames from, so that
// services resolve inside the pod without the cluster DNS knowing them (ServiceEntries) and without a round trip.
package nds

import (
	"net/netip"
	"slices"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	ndspb "github.com/meshd/meshd/pkg/dns/nds"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// NewNDS returns the NameTable generator. It answers with one unnamed resource, as Istio does, whatever names
// the proxy watches.
func NewNDS() model.Generator { return ndsGenerator{} }

type ndsGenerator struct{}

func (ndsGenerator) Generate(proxy *model.Proxy, push *model.PushContext, _ *model.WatchedResource,
	_ *model.PushRequest,
) ([]*discovery.Resource, error) {
	a := BuildNameTable(proxy, push).Any()
	return []*discovery.Resource{{Name: "", Resource: a, Version: util.ContentVersion(a.Value)}}, nil
}

// BuildNameTable returns the names the proxy may resolve: every service it sees (ServicesForProxy, so exportTo
// and Sidecar egress apply) that has an address.
//
//   - Services with VIPs resolve to the VIPs.
//   - Headless Kubernetes services resolve to the addresses of their healthy endpoints, as kube-dns does
//     (unready and terminating pods are left out). Per-pod names of StatefulSets are not generated: the model
//     has no pod hostname.
//   - Everything else (ExternalName, DNS ServiceEntries, address-less ServiceEntries) is left to upstream DNS.
//
// Kubernetes services carry their short name and namespace, as istiod sends them: the agent derives the forms
// a pod's search path makes (name.ns, name.ns.svc, and the bare name in its own namespace), so the table does
// not depend on the proxy's namespace.
func BuildNameTable(proxy *model.Proxy, push *model.PushContext) *ndspb.NameTable {
	services := push.ServicesForProxy(proxy)
	t := &ndspb.NameTable{Table: make(map[string]*ndspb.NameInfo, len(services))}
	for _, svc := range services {
		kube := isKubernetes(svc, push.Domain)
		ips := validIPs(svc.Addresses)
		if len(ips) == 0 && kube && svc.Resolution == model.Passthrough {
			ips = endpointIPs(push, svc)
		}
		if len(ips) == 0 {
			continue
		}
		info := &ndspb.NameInfo{IPs: ips, Registry: ndspb.RegistryExternal, Namespace: svc.Namespace}
		if kube {
			info.Registry = ndspb.RegistryKubernetes
			info.Shortname = svc.Name
		}
		t.Table[svc.Hostname] = info
	}
	return t
}

// isKubernetes tells Kubernetes Services (from the API server or from file-mode YAML) from ServiceEntries: only
// they are named name.namespace.svc.<domain>. A ServiceEntry host of that shape has the host as its name, so it
// does not match.
func isKubernetes(svc *model.Service, domain string) bool {
	return svc.Name != "" && svc.Hostname == svc.Name+"."+svc.Namespace+".svc."+domain
}

// validIPs keeps the addresses DNS can answer with; the unspecified address (a ServiceEntry's "0.0.0.0") is a
// placeholder, not a destination.
func validIPs(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil || ip.IsUnspecified() {
			continue
		}
		out = append(out, ip.String())
	}
	return out
}

// endpointIPs returns the distinct healthy endpoint addresses of a service across its ports, sorted so that the
// table (and so its version) does not change with endpoint order.
func endpointIPs(push *model.PushContext, svc *model.Service) []string {
	var addrs []string
	for _, p := range svc.Ports {
		for _, e := range push.Endpoints(svc.Hostname, p.Port) {
			if e.Health == model.Healthy {
				addrs = append(addrs, e.Address)
			}
		}
	}
	out := validIPs(addrs)
	slices.Sort(out)
	return slices.Compact(out)
}
