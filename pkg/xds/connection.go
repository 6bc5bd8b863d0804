package xds

import (
	"crypto/rand"
	"encoding/hex"
	"hash/fnv"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/meshd/meshd/pkg/model"
)

// Connection is one ADS stream from one proxy. All protocol state changes and all sends happen on the stream's
// own goroutine; mu only guards the state against concurrent readers (debug handlers, push selection).
type Connection struct {
	ID        string
	Peer      string
	Connected time.Time
	Delta     bool

	proxy *model.Proxy
	// caller is the authenticated identity on the secure port; nil on the plaintext port.
	caller *Caller
	pushes chan *pushEvent
	stop   chan struct{}
	// sendSotw or sendDelta is the stream's Send; only the stream goroutine calls it.
	sendSotw  func(*discovery.DiscoveryResponse) error
	sendDelta func(*discovery.DeltaDiscoveryResponse) error
	// refreshedSeq is the config sequence the proxy's workload was last resolved against.
	refreshedSeq uint64

	mu       sync.RWMutex
	watches  map[string]*watchState
	workload string // "name.namespace" of the resolved workload, for debug output
}

type pushEvent struct {
	req  *model.PushRequest
	done func()
}

// watchState is the protocol state of one type on one connection.
type watchState struct {
	model.WatchedResource
	// edsHosts are the service hostnames of the watched cluster names, to route endpoint pushes.
	edsHosts map[string]bool

	NonceSent, VersionSent   string
	NonceAcked, VersionAcked string
	LastSent, LastAcked      time.Time
	NackNonce, NackError     string
	LastNack                 time.Time

	// sentHash is the content hash of the last response; nackedHash that of the last rejected one, which is
	// never sent again as it is.
	sentHash, nackedHash uint64
	awaitingAck          bool
	// pending holds pushes that arrived while a response was unacknowledged: one push of the latest state
	// follows the ACK.
	pending *model.PushRequest
	// sent holds, by name, the resources the proxy has from us (Delta: its view; SotW: the last responses).
	sent map[string]*discovery.Resource
	// resend names resources to send on the next response even if unchanged (Delta EDS after a cluster
	// update, so Envoy can finish warming the cluster).
	resend map[string]bool
}

func newConnection(id string, p *model.Proxy, peer string, delta bool) *Connection {
	return &Connection{
		ID:        id,
		Peer:      peer,
		Connected: time.Now(),
		Delta:     delta,
		proxy:     p,
		pushes:    make(chan *pushEvent),
		stop:      make(chan struct{}),
		watches:   map[string]*watchState{},
	}
}

// Proxy returns the connected proxy. Its identity fields never change; callers must not read the fields the
// server refreshes per push (Workload, ServiceTargets, Labels) outside the stream goroutine.
func (c *Connection) Proxy() *model.Proxy { return c.proxy }

func (c *Connection) watch(typeURL string) *watchState {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.watches[typeURL]
}

func (c *Connection) setWatch(w *watchState) {
	c.mu.Lock()
	c.watches[w.TypeURL] = w
	c.mu.Unlock()
}

// update runs f on a watch with the lock held, so readers see consistent state.
func (c *Connection) update(f func()) {
	c.mu.Lock()
	f()
	c.mu.Unlock()
}

func newWatch(typeURL string, names []string, wildcard bool) *watchState {
	w := &watchState{
		WatchedResource: model.WatchedResource{TypeURL: typeURL, Wildcard: wildcard},
		sent:            map[string]*discovery.Resource{},
		resend:          map[string]bool{},
	}
	w.setNames(names)
	return w
}

func (w *watchState) setNames(names []string) {
	names = slices.Clone(names)
	sort.Strings(names)
	w.Names = slices.Compact(names)
	if w.TypeURL != model.EndpointType {
		return
	}
	w.edsHosts = make(map[string]bool, len(w.Names))
	for _, n := range w.Names {
		if _, _, h, _, err := model.ParseSubsetKey(n); err == nil {
			w.edsHosts[h] = true
		}
	}
}

// watchesAnyHost reports whether the connection's EDS watch covers one of hosts (nil hosts: any EDS watch).
func (c *Connection) watchesAnyHost(hosts map[string]bool) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	w := c.watches[model.EndpointType]
	if w == nil {
		return false
	}
	if hosts == nil {
		return true
	}
	for h := range hosts {
		if w.edsHosts[h] {
			return true
		}
	}
	return false
}

// pushOrder is the order of types in a full push: clusters before endpoints and listeners before routes, so
// that Envoy can warm each one with the next.
var pushOrder = []string{model.ClusterType, model.EndpointType, model.ListenerType, model.RouteType}

func orderedTypes(watches map[string]*watchState) []string {
	out := make([]string, 0, len(watches))
	for _, t := range pushOrder {
		if _, ok := watches[t]; ok {
			out = append(out, t)
		}
	}
	var rest []string
	for t := range watches {
		if !slices.Contains(pushOrder, t) {
			rest = append(rest, t)
		}
	}
	sort.Strings(rest)
	return append(out, rest...)
}

func newNonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// contentHash identifies a response by its resources' names and versions.
func contentHash(res []*discovery.Resource, removed []string) uint64 {
	h := fnv.New64a()
	for _, r := range res {
		h.Write([]byte(r.Name))
		h.Write([]byte{0})
		h.Write([]byte(r.Version))
		h.Write([]byte{0})
	}
	h.Write([]byte{1})
	for _, n := range removed {
		h.Write([]byte(n))
		h.Write([]byte{0})
	}
	return h.Sum64()
}

// WatchStatus is a copy of one watch's state for debug output.
type WatchStatus struct {
	TypeURL      string    `json:"type"`
	Names        []string  `json:"names,omitempty"`
	Wildcard     bool      `json:"wildcard,omitempty"`
	NonceSent    string    `json:"nonceSent,omitempty"`
	NonceAcked   string    `json:"nonceAcked,omitempty"`
	VersionSent  string    `json:"versionSent,omitempty"`
	VersionAcked string    `json:"versionAcked,omitempty"`
	LastSent     time.Time `json:"lastSent,omitzero"`
	LastAcked    time.Time `json:"lastAcked,omitzero"`
	NackNonce    string    `json:"nackNonce,omitempty"`
	NackError    string    `json:"lastNackError,omitempty"`
	LastNack     time.Time `json:"lastNack,omitzero"`
	Resources    int       `json:"resources"`
	Pending      bool      `json:"pendingPush,omitempty"`
}

// Status returns the connection's resolved workload and the state of each watch, in push order.
func (c *Connection) Status() (workload string, watches []WatchStatus) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, t := range orderedTypes(c.watches) {
		w := c.watches[t]
		watches = append(watches, WatchStatus{
			TypeURL: t, Names: w.Names, Wildcard: w.Wildcard,
			NonceSent: w.NonceSent, NonceAcked: w.NonceAcked, VersionSent: w.VersionSent, VersionAcked: w.VersionAcked,
			LastSent: w.LastSent, LastAcked: w.LastAcked, NackNonce: w.NackNonce, NackError: w.NackError,
			LastNack: w.LastNack, Resources: len(w.sent), Pending: w.pending != nil,
		})
	}
	return c.workload, watches
}

// SentResources returns the resources of a type the proxy currently has from this server, sorted by name.
// The returned resources are shared and must not be modified.
func (c *Connection) SentResources(typeURL string) []*discovery.Resource {
	c.mu.RLock()
	defer c.mu.RUnlock()
	w := c.watches[typeURL]
	if w == nil {
		return nil
	}
	out := make([]*discovery.Resource, 0, len(w.sent))
	for _, r := range w.sent {
		if r.Resource != nil {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b *discovery.Resource) int { return strings.Compare(a.Name, b.Name) })
	return out
}
