// Package serviceentry converts ServiceEntry and WorkloadEntry configs into model services, endpoints and
// workloads.
package serviceentry

import (
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/serviceregistry/kube"
)

// KindWorkloadEntry is the Workload.Kind of workloads made from WorkloadEntries.
const KindWorkloadEntry = "WorkloadEntry"

// ConvertServices returns one service per host of a ServiceEntry config, or nil when the config is not a
// ServiceEntry. Hosts are taken literally (ServiceEntry hosts are FQDNs or wildcards).
//
// Resolution NONE is Passthrough, STATIC ClientSideLB, DNS, DNS_ROUND_ROBIN and DYNAMIC_DNS are DNSLB. Location
// MESH_EXTERNAL (the default) sets MeshExternal. A port without protocol takes it from its name, as for
// Kubernetes services.
func ConvertServices(cfg *model.Config) []*model.Service {
	se, ok := cfg.Spec.(*networking.ServiceEntry)
	if !ok {
		return nil
	}
	var ports []*model.Port
	var targets map[int]model.TargetPort
	for _, p := range se.Ports {
		proto := model.ParseProtocol(p.Protocol)
		if p.Protocol == "" {
			proto = model.ProtocolFromPort(p.Name, "")
		}
		ports = append(ports, &model.Port{Name: p.Name, Port: int(p.Number), Protocol: proto})
		if p.TargetPort != 0 {
			if targets == nil {
				targets = map[int]model.TargetPort{}
			}
			targets[int(p.Number)] = model.TargetPort{Number: int(p.TargetPort)}
		}
	}
	var selector map[string]string
	if se.WorkloadSelector != nil && len(se.WorkloadSelector.Labels) > 0 {
		selector = se.WorkloadSelector.Labels
	}
	out := make([]*model.Service, 0, len(se.Hosts))
	for _, h := range se.Hosts {
		out = append(out, &model.Service{
			Hostname:     h,
			Name:         h,
			Namespace:    cfg.Namespace,
			Addresses:    se.Addresses,
			Ports:        ports,
			Resolution:   resolution(se.Resolution),
			Selector:     selector,
			Labels:       cfg.Labels,
			MeshExternal: se.Location == networking.ServiceEntry_MESH_EXTERNAL,
			ExportTo:     se.ExportTo,
			TargetPorts:  targets,
			Source:       cfg.Source,
			CreationTime: cfg.CreationTimestamp,
		})
	}
	return out
}

func resolution(r networking.ServiceEntry_Resolution) model.Resolution {
	switch r {
	case networking.ServiceEntry_NONE:
		return model.Passthrough
	case networking.ServiceEntry_STATIC:
		return model.ClientSideLB
	default:
		return model.DNSLB
	}
}

// Endpoints returns the endpoints of the services made from a ServiceEntry config (by ConvertServices):
//
//   - Each inline endpoint serves every port, on endpoint.ports[port name], else the port's targetPort, else its
//     number. Network is ignored. TLS mode is the endpoint's security.istio.io/tlsMode label, else "disabled" (as
//     Istio: inline endpoints are usually outside the mesh).
//   - With a workloadSelector, the workloads (WorkloadEntries and Pods) of the config's namespace whose labels
//     match serve, on the WorkloadEntry's port for that port name, else targetPort, else the port number.
//   - With DNS resolution and neither, the hosts themselves are the endpoints, for the proxy to resolve.
//
// The result is sorted per service like kube.EndpointsFromPods.
func Endpoints(cfg *model.Config, services []*model.Service, workloads []*model.Workload) []*model.Endpoint {
	se, ok := cfg.Spec.(*networking.ServiceEntry)
	if !ok {
		return nil
	}
	var out []*model.Endpoint
	for _, svc := range services {
		var eps []*model.Endpoint
		switch {
		case len(se.Endpoints) > 0:
			for _, we := range se.Endpoints {
				for _, p := range svc.Ports {
					port := int(we.Ports[p.Name])
					if port == 0 {
						port = model.ResolveTargetPort(svc, p, nil)
					}
					tls := we.Labels[kube.LabelTLSMode]
					if tls == "" {
						tls = model.TLSModeDisabled
					}
					eps = append(eps, &model.Endpoint{
						Hostname:       svc.Hostname,
						ServicePort:    p.Port,
						Address:        we.Address,
						Port:           port,
						Labels:         we.Labels,
						ServiceAccount: we.ServiceAccount,
						Namespace:      cfg.Namespace,
						Locality:       we.Locality,
						Health:         model.Healthy,
						TLSMode:        tls,
						Weight:         we.Weight,
					})
				}
			}
		case svc.Selector != nil:
			for _, w := range workloads {
				if w.IP == "" || w.Namespace != cfg.Namespace || !model.SelectedBy(svc.Selector, w.Labels) {
					continue
				}
				for _, p := range svc.Ports {
					port := 0
					if w.Kind == KindWorkloadEntry {
						port = w.ContainerPorts[p.Name]
					}
					if port == 0 {
						port = model.ResolveTargetPort(svc, p, nil)
					}
					eps = append(eps, kube.WorkloadEndpoint(svc, p, w, port))
				}
			}
		case svc.Resolution == model.DNSLB && !strings.HasPrefix(svc.Hostname, "*"):
			for _, p := range svc.Ports {
				eps = append(eps, &model.Endpoint{
					Hostname: svc.Hostname, ServicePort: p.Port, Address: svc.Hostname,
					Port: model.ResolveTargetPort(svc, p, nil), Namespace: cfg.Namespace,
					Health: model.Healthy, TLSMode: model.TLSModeDisabled,
				})
			}
		}
		kube.SortEndpoints(eps)
		out = append(out, eps...)
	}
	return out
}

// ConvertWorkloadEntry turns a WorkloadEntry config into a workload, or nil when it is not one. Labels are the
// spec labels; the TLS mode is the security.istio.io/tlsMode label, else "istio" (a WorkloadEntry describes a
// mesh workload, typically a VM with a sidecar); the service account defaults to "default"; a WorkloadEntry is
// always ready (meshd runs no health checks). Its ports map is kept as ContainerPorts, keyed by service port name.
func ConvertWorkloadEntry(cfg *model.Config) *model.Workload {
	we, ok := cfg.Spec.(*networking.WorkloadEntry)
	if !ok {
		return nil
	}
	w := &model.Workload{
		Name:           cfg.Name,
		Namespace:      cfg.Namespace,
		IP:             we.Address,
		Labels:         we.Labels,
		ServiceAccount: we.ServiceAccount,
		Locality:       we.Locality,
		Ready:          true,
		TLSMode:        we.Labels[kube.LabelTLSMode],
		Kind:           KindWorkloadEntry,
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	if w.TLSMode == "" {
		w.TLSMode = model.TLSModeIstio
	}
	if len(we.Ports) > 0 {
		w.ContainerPorts = make(map[string]int, len(we.Ports))
		for name, p := range we.Ports {
			w.ContainerPorts[name] = int(p)
		}
	}
	return w
}
