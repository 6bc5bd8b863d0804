// Package util holds helpers shared by the Envoy config translators.
package util

import (
	"fmt"
	"hash/fnv"
	"strconv"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	lru "github.com/hashicorp/golang-lru/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// MessageToAny wraps a message in Any with deterministic marshalling, so equal configs give equal bytes
// (Delta xDS versions and "unchanged, skip" checks compare bytes). It panics only on a programming error:
// every message we build is marshallable.
func MessageToAny(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("marshal %T: %v", m, err))
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}
}

// Resource marshals a named message into an xDS resource. Its Version is a hash of the marshalled bytes, so
// Delta xDS can tell changed resources from unchanged ones without re-marshalling, and versions agree across
// replicas and restarts.
func Resource(name string, m proto.Message) *discovery.Resource {
	a := MessageToAny(m)
	return &discovery.Resource{Name: name, Resource: a, Version: ContentVersion(a.Value)}
}

// ContentVersion hashes marshalled bytes into a short version string.
func ContentVersion(b []byte) string {
	h := fnv.New64a()
	h.Write(b)
	return strconv.FormatUint(h.Sum64(), 36)
}

// Cache holds marshalled resources shared across proxies. Keys must include everything the resource depends
// on (the push's config or endpoint sequence, the proxy properties that matter), so entries never go stale:
// old ones simply fall out of the LRU.
type Cache struct {
	lru *lru.Cache[string, *discovery.Resource]
}

// NewCache returns a cache holding at most size resources.
func NewCache(size int) *Cache {
	c, err := lru.New[string, *discovery.Resource](size)
	if err != nil {
		panic(err) // only for size <= 0
	}
	return &Cache{lru: c}
}

// Get returns the cached resource for key, building and storing it on a miss. Callers must not modify the
// returned resource: it is shared.
func (c *Cache) Get(key string, build func() *discovery.Resource) *discovery.Resource {
	if r, ok := c.lru.Get(key); ok {
		return r
	}
	r := build()
	c.lru.Add(key, r)
	return r
}

// Len reports how many resources are cached.
func (c *Cache) Len() int { return c.lru.Len() }
