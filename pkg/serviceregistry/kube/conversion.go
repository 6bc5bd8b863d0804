// Package kube converts Kubernetes objects (Services, Pods, EndpointSlices) into model services, workloads and
// endpoints. The functions are pure so that every source (files now, client-go informers later) gives a
// Kubernetes object the same meaning.
package kube

import (
	"cmp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshd/meshd/pkg/model"
)

// Well-known annotations and labels.
const (
	// AnnotationExportTo lists the namespaces a Service is visible to, comma separated.
	AnnotationExportTo = "networking.istio.io/exportTo"
	// AnnotationSidecarStatus is set by Istio's injector on pods that have a sidecar.
	AnnotationSidecarStatus = "sidecar.istio.io/status"
	// LabelTLSMode says whether a workload accepts Istio mTLS ("istio") or not ("disabled").
	LabelTLSMode = "security.istio.io/tlsMode"
	// LabelRegion, LabelZone and LabelSubzone give a workload's locality.
	LabelRegion  = "topology.kubernetes.io/region"
	LabelZone    = "topology.kubernetes.io/zone"
	LabelSubzone = "topology.istio.io/subzone"
	// LabelIstioLocality is Istio's per-workload locality override, "region.zone.subzone".
	LabelIstioLocality = "istio-locality"
	// LabelServiceName ties an EndpointSlice to its Service.
	LabelServiceName = discoveryv1.LabelServiceName
	// ProxyContainerName is the name of the injected sidecar container.
	ProxyContainerName = "istio-proxy"
	// DefaultDomainSuffix is the cluster domain used when none is given.
	DefaultDomainSuffix = "cluster.local"
	// Source is the Service.Source of objects read from the Kubernetes API.
	Source = "kube"
)

// Hostname returns the FQDN of a Kubernetes service: name.namespace.svc.suffix.
func Hostname(name, namespace, domainSuffix string) string {
	if domainSuffix == "" {
		domainSuffix = DefaultDomainSuffix
	}
	return name + "." + namespace + ".svc." + domainSuffix
}

// ConvertService turns a Kubernetes Service into a model service. Source is "kube"; callers reading another
// origin may overwrite it on the returned (fresh) value.
//
//   - Addresses are the cluster IPs; headless services ("None") have none and resolve as Passthrough.
//   - ExternalName services have no addresses, resolve by DNS (DNSLB), set ExternalName and, as in Istio, are
//     MeshExternal: the destination is outside the mesh.
//   - UDP ports keep protocol UDP; SCTP ports are left out (no proxy path for them).
//   - TCP ports take their protocol from appProtocol, then the port name prefix (model.ProtocolFromPort).
func ConvertService(svc *corev1.Service, domainSuffix string) *model.Service {
	s := &model.Service{
		Hostname:     Hostname(svc.Name, svc.Namespace, domainSuffix),
		Name:         svc.Name,
		Namespace:    svc.Namespace,
		Labels:       svc.Labels,
		ExportTo:     ParseExportTo(svc.Annotations[AnnotationExportTo]),
		Source:       Source,
		CreationTime: svc.CreationTimestamp.Time,
	}
	if len(svc.Spec.Selector) > 0 {
		s.Selector = svc.Spec.Selector
	}
	switch {
	case svc.Spec.Type == corev1.ServiceTypeExternalName && svc.Spec.ExternalName != "":
		s.Resolution = model.DNSLB
		s.ExternalName = svc.Spec.ExternalName
		s.MeshExternal = true
	case svc.Spec.ClusterIP == corev1.ClusterIPNone:
		s.Resolution = model.Passthrough
	default:
		s.Resolution = model.ClientSideLB
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			ips = []string{svc.Spec.ClusterIP}
		}
		for _, ip := range ips {
			if ip != "" && ip != corev1.ClusterIPNone {
				s.Addresses = append(s.Addresses, ip)
			}
		}
	}
	for _, p := range svc.Spec.Ports {
		var proto model.Protocol
		switch p.Protocol {
		case corev1.ProtocolSCTP:
			continue
		case corev1.ProtocolUDP:
			proto = model.ProtocolUDP
		default:
			proto = model.ProtocolFromPort(p.Name, deref(p.AppProtocol))
		}
		s.Ports = append(s.Ports, &model.Port{Name: p.Name, Port: int(p.Port), Protocol: proto})
		if tp, ok := targetPort(p.TargetPort); ok {
			if s.TargetPorts == nil {
				s.TargetPorts = map[int]model.TargetPort{}
			}
			s.TargetPorts[int(p.Port)] = tp
		}
	}
	return s
}

// targetPort converts a Service targetPort; false when it is unset (the service port is used).
func targetPort(tp intstr.IntOrString) (model.TargetPort, bool) {
	switch tp.Type {
	case intstr.Int:
		if tp.IntVal == 0 {
			return model.TargetPort{}, false
		}
		return model.TargetPort{Number: int(tp.IntVal)}, true
	case intstr.String:
		if tp.StrVal == "" {
			return model.TargetPort{}, false
		}
		// A number written as a string ("8080") is a number; the API server would have insisted on an int.
		if n, err := strconv.Atoi(tp.StrVal); err == nil {
			return model.TargetPort{Number: n}, n != 0
		}
		return model.TargetPort{Name: tp.StrVal}, true
	}
	return model.TargetPort{}, false
}

// ParseExportTo splits the exportTo annotation: "a, b" is [a b]; empty means no restriction (nil).
func ParseExportTo(v string) []string {
	var out []string
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// ConvertPod turns a Pod into a workload, or nil for a pod that has finished (Succeeded or Failed): its IP may
// already belong to another pod.
//
//   - IP is status.podIP, left empty for pods in an explicit phase other than Running (Pending, Unknown), so that
//     they produce no endpoints. A missing phase counts as Running: hand-written pods in files are minimal.
//   - Ready comes from the PodReady condition; a pod with an IP and no conditions at all is ready (again for
//     minimal hand-written pods); a terminating pod is not ready.
//   - TLSMode is the security.istio.io/tlsMode label when set, else "istio" for pods with an istio-proxy container
//     or the sidecar.istio.io/status annotation, else "disabled".
//   - Locality comes from the istio-locality label ("region.zone.subzone"), else from the topology labels on the
//     pod (node labels are not consulted yet).
func ConvertPod(pod *corev1.Pod) *model.Workload {
	switch pod.Status.Phase {
	case corev1.PodSucceeded, corev1.PodFailed:
		return nil
	}
	w := &model.Workload{
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		Labels:         pod.Labels,
		ServiceAccount: pod.Spec.ServiceAccountName,
		NodeName:       pod.Spec.NodeName,
		Locality:       PodLocality(pod.Labels),
		TLSMode:        PodTLSMode(pod),
		Kind:           "Pod",
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = pod.Spec.DeprecatedServiceAccount //nolint:staticcheck // honoured like the API server does
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	if pod.Status.Phase == "" || pod.Status.Phase == corev1.PodRunning {
		w.IP = pod.Status.PodIP
	}
	w.Ready = w.IP != "" && pod.DeletionTimestamp == nil && podReady(pod)
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == "" {
				continue
			}
			if w.ContainerPorts == nil {
				w.ContainerPorts = map[string]int{}
			}
			w.ContainerPorts[p.Name] = int(p.ContainerPort)
		}
	}
	return w
}

func podReady(pod *corev1.Pod) bool {
	if len(pod.Status.Conditions) == 0 {
		return true
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// PodTLSMode is the TLS mode of a pod as Istio derives it in Kubernetes (see ConvertPod).
func PodTLSMode(pod *corev1.Pod) string {
	if m, ok := pod.Labels[LabelTLSMode]; ok && m != "" {
		return m
	}
	if _, ok := pod.Annotations[AnnotationSidecarStatus]; ok {
		return model.TLSModeIstio
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == ProxyContainerName {
			return model.TLSModeIstio
		}
	}
	return model.TLSModeDisabled
}

// PodLocality reads "region/zone/subzone" from workload labels; empty when none are set.
func PodLocality(labels map[string]string) string {
	if l := labels[LabelIstioLocality]; l != "" {
		return strings.ReplaceAll(l, ".", "/")
	}
	return Locality(labels[LabelRegion], labels[LabelZone], labels[LabelSubzone])
}

// Locality joins the parts of a locality, dropping empty trailing parts: ("r", "", "") is "r".
func Locality(region, zone, subzone string) string {
	return strings.TrimRight(region+"/"+zone+"/"+subzone, "/")
}

// EndpointsFromPods returns the endpoints the Kubernetes endpoints controller would give the service: one per
// service port for each workload the selector picks in the service's namespace, with the target port resolved
// for that workload. Workloads without IP, and named target ports a workload does not declare, give none.
// WorkloadEntries (Kind "WorkloadEntry") are selected too, as Istio does; their ports map is keyed by service port
// name, so that wins over the target port. ExternalName services get one endpoint per port at the external name,
// for the proxy to resolve. The result is sorted by service port, then address.
func EndpointsFromPods(svc *model.Service, workloads []*model.Workload) []*model.Endpoint {
	if svc.ExternalName != "" {
		out := make([]*model.Endpoint, 0, len(svc.Ports))
		for _, p := range svc.Ports {
			out = append(out, &model.Endpoint{
				Hostname: svc.Hostname, ServicePort: p.Port, Address: svc.ExternalName,
				Port: model.ResolveTargetPort(svc, p, nil), Namespace: svc.Namespace,
				Health: model.Healthy, TLSMode: model.TLSModeDisabled,
			})
		}
		return out
	}
	var out []*model.Endpoint
	for _, w := range workloads {
		if w.IP == "" || w.Namespace != svc.Namespace || !model.SelectedBy(svc.Selector, w.Labels) {
			continue
		}
		for _, p := range svc.Ports {
			port := 0
			if w.Kind == "WorkloadEntry" {
				port = w.ContainerPorts[p.Name]
			}
			if port == 0 {
				port = model.ResolveTargetPort(svc, p, w)
			}
			if port == 0 {
				continue
			}
			out = append(out, WorkloadEndpoint(svc, p, w, port))
		}
	}
	SortEndpoints(out)
	return out
}

// WorkloadEndpoint is the endpoint of workload w serving service port p on port.
func WorkloadEndpoint(svc *model.Service, p *model.Port, w *model.Workload, port int) *model.Endpoint {
	health := model.Healthy
	if !w.Ready {
		health = model.Unhealthy
	}
	return &model.Endpoint{
		Hostname:       svc.Hostname,
		ServicePort:    p.Port,
		Address:        w.IP,
		Port:           port,
		Labels:         w.Labels,
		ServiceAccount: w.ServiceAccount,
		Namespace:      w.Namespace,
		WorkloadName:   w.Name,
		Locality:       w.Locality,
		Health:         health,
		TLSMode:        w.TLSMode,
	}
}

// SortEndpoints orders endpoints by service port, address, then port, so that equal sets compare equal.
func SortEndpoints(eps []*model.Endpoint) {
	slices.SortFunc(eps, func(a, b *model.Endpoint) int {
		return cmp.Or(cmp.Compare(a.ServicePort, b.ServicePort), cmp.Compare(a.Address, b.Address), cmp.Compare(a.Port, b.Port))
	})
}

// EndpointsFromSlices returns the endpoints of a service from its EndpointSlices (those labelled
// kubernetes.io/service-name with the service name, in its namespace; others are ignored). Slice ports match
// service ports by name. Health: ready is Healthy; serving and terminating is Draining; anything else Unhealthy
// (unset conditions read as Kubernetes documents them: ready and serving true, terminating false). Labels,
// service account, TLS mode and locality come from the workload at the endpoint's address when pods has it
// (keyed by IP); otherwise the locality is the slice's zone, the workload name the targetRef's, and the TLS mode
// "disabled". FQDN slices are ignored. The result is sorted like EndpointsFromPods.
func EndpointsFromSlices(svc *model.Service, endpointSlices []*discoveryv1.EndpointSlice, pods map[string]*model.Workload) []*model.Endpoint {
	type epKey struct {
		addr string
		port int
	}
	seen := map[epKey]*model.Endpoint{}
	var out []*model.Endpoint
	for _, sl := range endpointSlices {
		if sl.Namespace != svc.Namespace || sl.Labels[LabelServiceName] != svc.Name {
			continue
		}
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		for _, sp := range sl.Ports {
			if sp.Port == nil || (sp.Protocol != nil && *sp.Protocol == corev1.ProtocolSCTP) {
				continue
			}
			p := svc.PortByName(deref(sp.Name))
			if p == nil {
				continue
			}
			for _, e := range sl.Endpoints {
				if len(e.Addresses) == 0 {
					continue
				}
				ep := sliceEndpoint(svc, p, int(*sp.Port), e, pods)
				k := epKey{ep.Address, ep.ServicePort}
				if prev := seen[k]; prev != nil {
					// The same address in two slices (while the controller moves it): keep the healthier view.
					if ep.Health < prev.Health {
						*prev = *ep
					}
					continue
				}
				seen[k] = ep
				out = append(out, ep)
			}
		}
	}
	SortEndpoints(out)
	return out
}

func sliceEndpoint(svc *model.Service, p *model.Port, port int, e discoveryv1.Endpoint, pods map[string]*model.Workload) *model.Endpoint {
	ready := e.Conditions.Ready == nil || *e.Conditions.Ready
	serving := ready
	if e.Conditions.Serving != nil {
		serving = *e.Conditions.Serving
	}
	terminating := e.Conditions.Terminating != nil && *e.Conditions.Terminating
	health := model.Unhealthy
	switch {
	case ready:
		health = model.Healthy
	case serving && terminating:
		health = model.Draining
	}
	ep := &model.Endpoint{
		Hostname:    svc.Hostname,
		ServicePort: p.Port,
		Address:     e.Addresses[0],
		Port:        port,
		Namespace:   svc.Namespace,
		Health:      health,
		TLSMode:     model.TLSModeDisabled,
	}
	if e.Zone != nil && *e.Zone != "" {
		ep.Locality = Locality("", *e.Zone, "")
	}
	if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
		ep.WorkloadName = e.TargetRef.Name
	}
	if w := pods[ep.Address]; w != nil && w.Namespace == svc.Namespace {
		ep.Labels = w.Labels
		ep.ServiceAccount = w.ServiceAccount
		ep.WorkloadName = w.Name
		ep.TLSMode = w.TLSMode
		if w.Locality != "" {
			ep.Locality = w.Locality
		}
	}
	return ep
}
