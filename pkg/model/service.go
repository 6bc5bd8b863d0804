package model

import (
	"sort"
	"strings"
	"time"
)

// Resolution says how a client resolves the endpoints of a service.
type Resolution int

const (
	// ClientSideLB: the control plane sends the endpoints (EDS).
	ClientSideLB Resolution = iota
	// DNSLB: the proxy resolves the hostname itself (STRICT_DNS cluster).
	DNSLB
	// Passthrough: the connection goes to the original destination (ORIGINAL_DST cluster), e.g. headless services.
	Passthrough
)

// Port is one port of a service.
type Port struct {
	Name     string
	Port     int
	Protocol Protocol
}

// Service is a hostname clients call, from a Kubernetes Service or a ServiceEntry. Immutable once published.
type Service struct {
	// Hostname is the fully qualified name, e.g. reviews.default.svc.cluster.local.
	Hostname  string
	Name      string
	Namespace string
	// Addresses are the VIPs (ClusterIP, ServiceEntry addresses). Empty for headless services.
	Addresses  []string
	Ports      []*Port
	Resolution Resolution
	// Selector picks the workloads behind the service; nil means none (endpoints come from elsewhere).
	Selector map[string]string
	Labels   map[string]string
	// MeshExternal marks services outside the mesh (ServiceEntry MESH_EXTERNAL): no mTLS, no inbound config.
	MeshExternal bool
	// ExportTo lists the namespaces that see the service: "*" (all, the default) or "." (its own) or names.
	ExportTo []string
	// TargetPorts maps a service port number to the workload port it forwards to, by number or by name.
	TargetPorts map[int]TargetPort
	// ExternalName is set for Kubernetes ExternalName services (served as DNS clusters).
	ExternalName string
	// Source names where the service came from ("file:samples/bookinfo/bookinfo.yaml", "kube"), for debug output.
	Source       string
	CreationTime time.Time
}

// TargetPort is the workload side of a service port: a number, or a container port name to look up per workload.
type TargetPort struct {
	Number int
	Name   string
}

// PortByNumber returns the service port with the given number, or nil.
func (s *Service) PortByNumber(n int) *Port {
	for _, p := range s.Ports {
		if p.Port == n {
			return p
		}
	}
	return nil
}

// PortByName returns the service port with the given name, or nil.
func (s *Service) PortByName(name string) *Port {
	for _, p := range s.Ports {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// VIP returns the first address of the service, or "" when it has none.
func (s *Service) VIP() string {
	if len(s.Addresses) == 0 {
		return ""
	}
	return s.Addresses[0]
}

// VisibleTo reports whether a proxy in namespace ns may see this service.
func (s *Service) VisibleTo(ns string) bool {
	return exportedTo(s.ExportTo, s.Namespace, ns)
}

func exportedTo(exportTo []string, owner, ns string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		switch e {
		case "*":
			return true
		case ".":
			if owner == ns {
				return true
			}
		default:
			if e == ns {
				return true
			}
		}
	}
	return false
}

// HealthStatus of an endpoint.
type HealthStatus int

const (
	Healthy HealthStatus = iota
	Unhealthy
	// Draining endpoints are terminating: kept for existing connections, not chosen for new ones.
	Draining
)

// TLS modes of an endpoint, as carried in the "security.istio.io/tlsMode" label and the istio filter metadata.
const (
	TLSModeIstio    = "istio"
	TLSModeDisabled = "disabled"
)

// Endpoint is one address:port serving one port of one service. Immutable once published.
type Endpoint struct {
	// Hostname and ServicePort identify the service port this endpoint serves.
	Hostname    string
	ServicePort int
	Address     string
	// Port is the port on the workload (the resolved target port).
	Port           int
	Labels         map[string]string
	ServiceAccount string
	Namespace      string
	WorkloadName   string
	// Locality is "region/zone/subzone"; any part may be empty.
	Locality string
	Health   HealthStatus
	TLSMode  string
	// Weight is the load-balancing weight; 0 means the default (1).
	Weight uint32
}

// Workload is a running instance (a Pod, a WorkloadEntry) that a proxy can be.
type Workload struct {
	Name           string
	Namespace      string
	IP             string
	Labels         map[string]string
	ServiceAccount string
	NodeName       string
	Locality       string
	Ready          bool
	TLSMode        string
	// ContainerPorts maps a named container port to its number, to resolve named target ports.
	ContainerPorts map[string]int
	// Kind is "Pod" or "WorkloadEntry".
	Kind string
}

// Key is the "name.namespace" form used in proxy node ids.
func (w *Workload) Key() string { return w.Name + "." + w.Namespace }

// SelectedBy reports whether every label of selector is on the workload. A nil selector selects nothing.
func SelectedBy(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// LabelsMatch reports whether labels contain every entry of subset; an empty subset matches everything.
func LabelsMatch(subset, labels map[string]string) bool {
	for k, v := range subset {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

// ResolveHostname turns a short host from an Istio object ("reviews", "reviews.default") into a fully qualified
// name, relative to the namespace the object lives in. Names that already contain a dot beyond the namespace, and
// wildcards, are kept as they are.
func ResolveHostname(host, namespace, domainSuffix string) string {
	if host == "" || host == "*" || strings.HasPrefix(host, "*") && strings.Count(host, ".") > 0 {
		return host
	}
	if strings.Contains(host, ".") {
		// "reviews.default" is namespace-qualified; anything with two or more dots is taken as an FQDN.
		if strings.Count(host, ".") == 1 {
			return host + ".svc." + domainSuffix
		}
		return host
	}
	return host + "." + namespace + ".svc." + domainSuffix
}

// HostMatches reports whether a (possibly wildcard) host pattern such as "*.default.svc.cluster.local" or "*"
// covers the concrete hostname.
func HostMatches(pattern, host string) bool {
	if pattern == host || pattern == "*" {
		return true
	}
	if strings.HasPrefix(pattern, "*") {
		return strings.HasSuffix(host, pattern[1:])
	}
	return false
}

// SortedKeys returns the keys of a string map in order, for deterministic output.
func SortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
