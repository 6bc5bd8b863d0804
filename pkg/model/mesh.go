package model

import (
	"fmt"
	"os"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	meshconfig "istio.io/api/mesh/v1alpha1"
	"sigs.k8s.io/yaml"
)

// DefaultMeshConfig returns Istio's defaults for the fields meshd reads.
func DefaultMeshConfig() *meshconfig.MeshConfig {
	return &meshconfig.MeshConfig{
		RootNamespace:         "istio-system",
		TrustDomain:           "cluster.local",
		ConnectTimeout:        durationpb.New(10e9),
		EnableAutoMtls:        nil, // unset means true in Istio
		OutboundTrafficPolicy: &meshconfig.MeshConfig_OutboundTrafficPolicy{Mode: meshconfig.MeshConfig_OutboundTrafficPolicy_ALLOW_ANY},
		DefaultConfig: &meshconfig.ProxyConfig{
			DiscoveryAddress: "istiod.istio-system.svc:15012",
			ProxyAdminPort:   15000,
			StatusPort:       15020,
		},
	}
}

// LoadMeshConfig reads a MeshConfig YAML file (the "mesh" key of the istio ConfigMap) over the defaults.
// A missing file is not an error when optional is set: istiod starts with defaults then too.
func LoadMeshConfig(path string, optional bool) (*meshconfig.MeshConfig, error) {
	mesh := DefaultMeshConfig()
	if path == "" {
		return mesh, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		if optional && os.IsNotExist(err) {
			return mesh, nil
		}
		return nil, fmt.Errorf("mesh config: %w", err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("mesh config %s: %w", path, err)
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(js, mesh); err != nil {
		return nil, fmt.Errorf("mesh config %s: %w", path, err)
	}
	return mesh, nil
}
