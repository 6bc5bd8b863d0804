package model

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"
)

// NodeType is the role of a proxy, the first field of its node id.
type NodeType string

const (
	SidecarProxy NodeType = "sidecar"
	Router       NodeType = "router"
)

// Generator names that proxies ask for in ISTIO_META_GENERATOR.
const (
	GeneratorGRPC = "grpc"
)

// NodeMetadata is the subset of the Istio node metadata (ISTIO_META_* in the agent) meshd understands.
type NodeMetadata struct {
	Namespace      string            `json:"NAMESPACE,omitempty"`
	Labels         map[string]string `json:"LABELS,omitempty"`
	Annotations    map[string]string `json:"ANNOTATIONS,omitempty"`
	InstanceIPs    string            `json:"INSTANCE_IPS,omitempty"`
	ServiceAccount string            `json:"SERVICE_ACCOUNT,omitempty"`
	Generator      string            `json:"GENERATOR,omitempty"`
	WorkloadName   string            `json:"WORKLOAD_NAME,omitempty"`
	ClusterID      string            `json:"CLUSTER_ID,omitempty"`
	MeshID         string            `json:"MESH_ID,omitempty"`
	IstioVersion   string            `json:"ISTIO_VERSION,omitempty"`
	// InterceptionMode is REDIRECT (default), TPROXY or NONE.
	InterceptionMode string `json:"INTERCEPTION_MODE,omitempty"`
}

// Proxy is a connected xDS client. Fields set by ParseProxy are fixed for the life of the connection; the
// workload and service targets are refreshed on every push because the registry may change under them.
type Proxy struct {
	// ID is the full node id as sent by the client.
	ID   string
	Type NodeType
	// IPAddresses are the proxy's own addresses: INSTANCE_IPS if given, else the IP of the node id.
	IPAddresses []string
	// PodName and Namespace come from the "POD.NS" part of the node id.
	PodName   string
	Namespace string
	// DNSDomain is the last field of the node id, e.g. default.svc.cluster.local.
	DNSDomain string
	Metadata  *NodeMetadata
	// Labels are the workload labels: from the registry when the workload is known, else from metadata.
	Labels map[string]string

	// Workload and ServiceTargets are refreshed by the xDS server before each generation for this proxy (a
	// connection's generations never run concurrently). Workload is nil when the registry does not know the proxy.
	Workload       *Workload
	ServiceTargets []ServiceTarget
}

// SetWorkload records the proxy's workload as found in push and derives its labels and inbound service targets.
func (p *Proxy) SetWorkload(push *PushContext) {
	p.Workload = push.WorkloadForProxy(p)
	if p.Workload != nil {
		p.Labels = p.Workload.Labels
	} else {
		p.Labels = p.Metadata.Labels
	}
	w := p.Workload
	if w == nil && len(p.Labels) > 0 {
		// A workload unknown to the registry (a VM, a test client) still serves the services its labels select.
		w = &Workload{Name: p.PodName, Namespace: p.Namespace, IP: p.PrimaryIP(), Labels: p.Labels}
	}
	p.ServiceTargets = push.ServiceTargets(w)
}

// ParseProxy validates a node id of the form TYPE~IP~POD.NAMESPACE~DOMAIN and decodes the node metadata.
func ParseProxy(nodeID string, meta *structpb.Struct) (*Proxy, error) {
	if nodeID == "" {
		return nil, fmt.Errorf("node id is empty")
	}
	parts := strings.Split(nodeID, "~")
	if len(parts) != 4 {
		return nil, fmt.Errorf("node id %q: want 4 fields TYPE~IP~POD.NAMESPACE~DOMAIN, got %d", nodeID, len(parts))
	}
	p := &Proxy{ID: nodeID, Type: NodeType(parts[0]), DNSDomain: parts[3], Metadata: &NodeMetadata{}}
	switch p.Type {
	case SidecarProxy, Router:
	default:
		return nil, fmt.Errorf("node id %q: unknown proxy type %q (want sidecar or router)", nodeID, parts[0])
	}
	if meta != nil {
		if err := decodeMetadata(meta, p.Metadata); err != nil {
			return nil, fmt.Errorf("node %q: metadata: %w", nodeID, err)
		}
	}
	if podNS := parts[2]; podNS != "" {
		i := strings.LastIndex(podNS, ".")
		if i > 0 {
			p.PodName, p.Namespace = podNS[:i], podNS[i+1:]
		} else {
			p.PodName = podNS
		}
	}
	if p.Metadata.Namespace != "" {
		p.Namespace = p.Metadata.Namespace
	}
	if p.Namespace == "" {
		return nil, fmt.Errorf("node id %q: no namespace (set POD.NAMESPACE in the id or NAMESPACE in metadata)", nodeID)
	}
	for _, ip := range strings.Split(p.Metadata.InstanceIPs, ",") {
		if ip = strings.TrimSpace(ip); ip == "" {
			continue
		}
		if _, err := netip.ParseAddr(ip); err != nil {
			return nil, fmt.Errorf("node %q: INSTANCE_IPS: %q is not an IP address", nodeID, ip)
		}
		p.IPAddresses = append(p.IPAddresses, ip)
	}
	if len(p.IPAddresses) == 0 {
		if _, err := netip.ParseAddr(parts[1]); err != nil {
			return nil, fmt.Errorf("node id %q: %q is not an IP address", nodeID, parts[1])
		}
		p.IPAddresses = []string{parts[1]}
	}
	p.Labels = p.Metadata.Labels
	return p, nil
}

// decodeMetadata maps the Struct through JSON: node metadata values are strings, maps of strings, or (LABELS)
// maps, and JSON is the shape the agent writes them in.
func decodeMetadata(meta *structpb.Struct, out *NodeMetadata) error {
	raw, err := meta.MarshalJSON()
	if err != nil {
		return err
	}
	// Unknown keys are normal (Envoy and the agent send many); values of the wrong type for known keys are not.
	if err := json.Unmarshal(raw, out); err != nil {
		return err
	}
	return nil
}

// IsGRPC reports whether the proxy is a proxyless gRPC client.
func (p *Proxy) IsGRPC() bool { return p.Metadata != nil && p.Metadata.Generator == GeneratorGRPC }

// Key is "POD.NAMESPACE", the form debug endpoints accept as proxyID.
func (p *Proxy) Key() string {
	if p.PodName == "" {
		return p.ID
	}
	return p.PodName + "." + p.Namespace
}

// PrimaryIP is the first instance IP.
func (p *Proxy) PrimaryIP() string { return p.IPAddresses[0] }
