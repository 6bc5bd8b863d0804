// Package schema lists the object types meshd accepts: the Istio configuration kinds it serves and the
// Kubernetes kinds its registries read. Everything else in a manifest is skipped.
package schema

import (
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/pkg/model"
)

// Schema describes one accepted apiVersion+kind.
type Schema struct {
	// Group is the API group, "" for the Kubernetes core group.
	Group string
	// Version is the API version within the group, e.g. "v1".
	Version string
	// Kind is the object kind as written in manifests.
	Kind string
	// ModelKind is the kind of the model object (Istio kinds), or the registry kind it feeds (Kubernetes kinds;
	// empty for EndpointSlice, which only ever surfaces as endpoints).
	ModelKind model.Kind
	// NewSpec returns an empty spec message for Istio kinds; nil for Kubernetes kinds.
	NewSpec func() proto.Message
	// Namespaced is false for cluster-scoped kinds (Namespace).
	Namespaced bool
}

// APIVersion is "group/version", or "version" for the core group.
func (s *Schema) APIVersion() string {
	if s.Group == "" {
		return s.Version
	}
	return s.Group + "/" + s.Version
}

// IsIstio reports whether objects of this type become model.Config.
func (s *Schema) IsIstio() bool { return s.NewSpec != nil }

// Kubernetes kinds meshd reads.
const (
	KindService        = "Service"
	KindPod            = "Pod"
	KindServiceAccount = "ServiceAccount"
	KindNamespace      = "Namespace"
	KindEndpointSlice  = "EndpointSlice"
)

const (
	groupNetworking = "networking.istio.io"
	groupSecurity   = "security.istio.io"
)

var all []*Schema

func init() {
	istio := func(group string, versions []string, kind model.Kind, newSpec func() proto.Message) {
		for _, v := range versions {
			all = append(all, &Schema{Group: group, Version: v, Kind: string(kind), ModelKind: kind, NewSpec: newSpec, Namespaced: true})
		}
	}
	// networking.istio.io v1 and v1beta1 are aliases of the v1alpha3 messages.
	netVersions := []string{"v1", "v1beta1", "v1alpha3"}
	istio(groupNetworking, netVersions, model.KindVirtualService, func() proto.Message { return &networking.VirtualService{} })
	istio(groupNetworking, netVersions, model.KindDestinationRule, func() proto.Message { return &networking.DestinationRule{} })
	istio(groupNetworking, netVersions, model.KindGateway, func() proto.Message { return &networking.Gateway{} })
	istio(groupNetworking, netVersions, model.KindServiceEntry, func() proto.Message { return &networking.ServiceEntry{} })
	istio(groupNetworking, netVersions, model.KindWorkloadEntry, func() proto.Message { return &networking.WorkloadEntry{} })
	istio(groupNetworking, netVersions, model.KindSidecar, func() proto.Message { return &networking.Sidecar{} })
	secVersions := []string{"v1", "v1beta1"}
	istio(groupSecurity, secVersions, model.KindPeerAuthentication, func() proto.Message { return &security.PeerAuthentication{} })
	istio(groupSecurity, secVersions, model.KindAuthorizationPolicy, func() proto.Message { return &security.AuthorizationPolicy{} })

	all = append(all,
		&Schema{Version: "v1", Kind: KindService, ModelKind: model.KindService, Namespaced: true},
		&Schema{Version: "v1", Kind: KindPod, ModelKind: model.KindPod, Namespaced: true},
		&Schema{Version: "v1", Kind: KindServiceAccount, ModelKind: model.KindServiceAccount, Namespaced: true},
		&Schema{Version: "v1", Kind: KindNamespace, ModelKind: model.KindNamespace},
		&Schema{Group: "discovery.k8s.io", Version: "v1", Kind: KindEndpointSlice, Namespaced: true},
	)
}

// All returns every accepted type. The slice must not be modified.
func All() []*Schema { return all }

// Lookup finds the schema of an apiVersion ("networking.istio.io/v1", "v1") and kind.
func Lookup(apiVersion, kind string) (*Schema, bool) {
	group, version := SplitAPIVersion(apiVersion)
	for _, s := range all {
		if s.Group == group && s.Version == version && s.Kind == kind {
			return s, true
		}
	}
	return nil, false
}

// ForKind returns the preferred schema (the newest version) of a model kind, or nil.
func ForKind(kind model.Kind) *Schema {
	for _, s := range all {
		if s.IsIstio() && s.ModelKind == kind {
			return s
		}
	}
	return nil
}

// IstioKinds returns the Istio configuration kinds meshd serves, in a fixed order.
func IstioKinds() []model.Kind {
	var out []model.Kind
	for _, s := range all {
		if s.IsIstio() && !slices.Contains(out, s.ModelKind) {
			out = append(out, s.ModelKind)
		}
	}
	return out
}

// VersionsOf lists the accepted apiVersions of a kind in a group, so a wrong version can be reported with the
// right ones. It is empty when the group/kind pair is unknown.
func VersionsOf(group, kind string) []string {
	var out []string
	for _, s := range all {
		if s.Group == group && s.Kind == kind {
			out = append(out, s.APIVersion())
		}
	}
	return out
}

// IsIstioGroup reports whether an API group belongs to Istio (networking.istio.io, telemetry.istio.io, ...).
func IsIstioGroup(group string) bool {
	return group == "istio.io" || strings.HasSuffix(group, ".istio.io")
}

// SplitAPIVersion splits "group/version"; the core group has no slash.
func SplitAPIVersion(apiVersion string) (group, version string) {
	if g, v, ok := strings.Cut(apiVersion, "/"); ok {
		return g, v
	}
	return "", apiVersion
}
