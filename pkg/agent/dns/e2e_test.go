package dns

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	miekg "github.com/miekg/dns"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/dns/nds"
	"github.com/meshd/meshd/pkg/model"
	ndsgen "github.com/meshd/meshd/pkg/networking/nds"
	"github.com/meshd/meshd/pkg/xds"
)

// registry lets the test change services between pushes.
type registry struct {
	mu sync.Mutex
	sd *model.StaticDiscovery
}

func (r *registry) set(services ...*model.Service) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sd = model.NewStaticDiscovery(services, nil, nil)
}

func (r *registry) get() *model.StaticDiscovery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sd
}

func (r *registry) Services() []*model.Service           { return r.get().Services() }
func (r *registry) Endpoints(h string) []*model.Endpoint { return r.get().Endpoints(h) }
func (r *registry) Workloads() []*model.Workload         { return r.get().Workloads() }

func kubeService(name, ns, vip string) *model.Service {
	return &model.Service{Hostname: name + "." + ns + ".svc.cluster.local", Name: name, Namespace: ns,
		Addresses: []string{vip}, Ports: []*model.Port{{Name: "http", Port: 9080, Protocol: model.ProtocolHTTP}}}
}

// TestWatchFollowsControlPlane runs meshd's ADS server with the NDS generator over real gRPC: the agent's table
// fills from it, and a service added to the registry answers in DNS after the push.
func TestWatchFollowsControlPlane(t *testing.T) {
	reg := &registry{}
	reg.set(kubeService("reviews", "default", "10.96.0.13"))
	env := &model.Environment{ServiceDiscovery: reg, ConfigStore: model.NewStaticConfigStore(nil),
		Mesh: model.DefaultMeshConfig(), DomainSuffix: "cluster.local"}
	ds := xds.New(env, xds.Options{
		Debounce:   xds.DebounceOptions{After: 10 * time.Millisecond, Max: 100 * time.Millisecond},
		Generators: map[string]model.Generator{nds.TypeURL: ndsgen.NewNDS()},
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ds.Start(ctx)
	conn := dialADS(t, ds.Register)

	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{up.addr}})
	runWatch(t, conn, &corev3.Node{Id: "sidecar~10.1.0.1~client.default~default.svc.cluster.local"}, s)

	resolves := func(name, ip string) func() bool {
		return func() bool {
			c := &miekg.Client{Timeout: 5 * time.Second}
			m := new(miekg.Msg)
			m.SetQuestion(name, miekg.TypeA)
			r, _, err := c.Exchange(m, s.Addr().String())
			return err == nil && r.Rcode == miekg.RcodeSuccess && slices.Equal(addrs(r), []string{ip})
		}
	}
	testutil.Eventually(t, 10*time.Second, "reviews to resolve from the pushed table",
		resolves("reviews.default.svc.cluster.local.", "10.96.0.13"))

	reg.set(kubeService("reviews", "default", "10.96.0.13"), kubeService("details", "default", "10.96.0.11"))
	ds.ConfigUpdate(model.NewPushRequest(true, model.ReasonServiceUpdate))
	testutil.Eventually(t, 10*time.Second, "the new service to resolve by its short name", resolves("details.", "10.96.0.11"))

	// The agent acknowledged what it applied.
	testutil.Eventually(t, 10*time.Second, "the NameTable ACK", func() bool {
		for _, c := range ds.Connections() {
			_, watches := c.Status()
			for _, w := range watches {
				if w.TypeURL == nds.TypeURL && w.NonceSent != "" && w.NonceAcked == w.NonceSent && w.NackNonce == "" {
					return true
				}
			}
		}
		return false
	})
}
