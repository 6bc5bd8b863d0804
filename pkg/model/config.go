package model

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
)

// Kind names a type of object in the model: the Istio configuration kinds plus the registry kinds that can
// trigger a push.
type Kind string

const (
	KindVirtualService      Kind = "VirtualService"
	KindDestinationRule     Kind = "DestinationRule"
	KindGateway             Kind = "Gateway"
	KindServiceEntry        Kind = "ServiceEntry"
	KindWorkloadEntry       Kind = "WorkloadEntry"
	KindSidecar             Kind = "Sidecar"
	KindPeerAuthentication  Kind = "PeerAuthentication"
	KindAuthorizationPolicy Kind = "AuthorizationPolicy"

	// Registry kinds: they never appear as Config, only in push requests.
	KindService        Kind = "Service"
	KindEndpoints      Kind = "Endpoints"
	KindPod            Kind = "Pod"
	KindMeshConfig     Kind = "MeshConfig"
	KindNode           Kind = "Node"
	KindNamespace      Kind = "Namespace"
	KindServiceAccount Kind = "ServiceAccount"
)

// ConfigKey identifies one object of a kind.
type ConfigKey struct {
	Kind      Kind
	Name      string
	Namespace string
}

func (k ConfigKey) String() string { return string(k.Kind) + "/" + k.Namespace + "/" + k.Name }

// Config is one Istio configuration object: metadata plus its spec, a message from istio.io/api
// (e.g. *networking.VirtualService). Configs are immutable once published: copy before changing.
type Config struct {
	Kind              Kind
	Name              string
	Namespace         string
	Labels            map[string]string
	Annotations       map[string]string
	ResourceVersion   string
	CreationTimestamp time.Time
	// Source says where the object came from, e.g. "samples/bookinfo/vs.yaml" or "kube", for messages.
	Source string
	Spec   proto.Message
}

// Key returns the identity of the object.
func (c *Config) Key() ConfigKey {
	return ConfigKey{Kind: c.Kind, Name: c.Name, Namespace: c.Namespace}
}

// String names the object the way error messages do: "VirtualService default/reviews".
func (c *Config) String() string { return fmt.Sprintf("%s %s/%s", c.Kind, c.Namespace, c.Name) }
