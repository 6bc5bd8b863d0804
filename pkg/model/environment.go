package model

import (
	meshconfig "istio.io/api/mesh/v1alpha1"
)

// ServiceDiscovery is what a registry source (files, Kubernetes) exposes to push-context construction. Every
// method returns a consistent, immutable view: callers may keep the slices but never modify them.
type ServiceDiscovery interface {
	Services() []*Service
	// Endpoints returns every endpoint of the service with this hostname, across all its ports.
	Endpoints(hostname string) []*Endpoint
	Workloads() []*Workload
}

// ConfigStore lists Istio configuration objects of one kind.
type ConfigStore interface {
	List(kind Kind) []*Config
}

// Environment is everything a push context is built from.
type Environment struct {
	ServiceDiscovery ServiceDiscovery
	ConfigStore      ConfigStore
	Mesh             *meshconfig.MeshConfig
	// DomainSuffix is the cluster domain, "cluster.local" by default.
	DomainSuffix string
	// ClusterID names the cluster of this control plane (CLUSTER_ID of proxies), "Kubernetes" by default.
	ClusterID string
}

// Snapshotter is implemented by sources that can hand out one consistent view of services, endpoints,
// workloads and config. Push contexts are built from it when available, so that a change landing while a push
// context is being built cannot mix two states.
type Snapshotter interface {
	Snapshot() (*StaticDiscovery, *StaticConfigStore)
}
