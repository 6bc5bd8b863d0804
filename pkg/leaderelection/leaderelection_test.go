package leaderelection

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshd/meshd/internal/testutil"
)

func fastOptions(id string) Options {
	return Options{
		Namespace: "istio-system",
		Identity:  id,
		// Leases count whole seconds: a shorter duration is stored as 0, an always expired lease.
		LeaseDuration: 2 * time.Second,
		RenewDeadline: time.Second,
		RetryPeriod:   100 * time.Millisecond,
	}
}

// candidate is one elector running in the background, with a run function that records its terms.
type candidate struct {
	e       *Elector
	cancel  context.CancelFunc
	done    chan struct{}
	running atomic.Int32 // run functions currently running
	terms   atomic.Int32 // times the run function was started
}

func start(t *testing.T, client *fake.Clientset, id string) *candidate {
	t.Helper()
	e, err := New(client, fastOptions(id))
	if err != nil {
		t.Fatal(err)
	}
	c := &candidate{e: e, done: make(chan struct{})}
	e.AddRunFunction(func(stop <-chan struct{}) {
		c.terms.Add(1)
		c.running.Add(1)
		defer c.running.Add(-1)
		<-stop
	})
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go func() {
		defer close(c.done)
		if err := e.Run(ctx); err != nil {
			t.Errorf("%s: Run: %v", id, err)
		}
	}()
	t.Cleanup(func() { c.stop(t) })
	return c
}

func (c *candidate) stop(t *testing.T) {
	c.cancel()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: Run did not return after its context ended", c.e.Identity())
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, what, cond)
}

func leaders(cs ...*candidate) []*candidate {
	var out []*candidate
	for _, c := range cs {
		if c.e.IsLeader() {
			out = append(out, c)
		}
	}
	return out
}

// Two electors on one Lease: exactly one leads and runs the leader work; when it stops, it releases the Lease,
// its work is stopped, and the other takes over.
func TestOneLeaderAndTakeover(t *testing.T) {
	client := fake.NewClientset()
	a := start(t, client, "meshd-a")
	b := start(t, client, "meshd-b")

	waitFor(t, "a leader", func() bool { return len(leaders(a, b)) == 1 })
	// Observe for more than a lease period: never two leaders, and only the leader runs its work.
	until := time.Now().Add(3 * time.Second)
	for time.Now().Before(until) {
		ls := leaders(a, b)
		if len(ls) != 1 {
			t.Fatalf("%d leaders, want exactly 1", len(ls))
		}
		time.Sleep(20 * time.Millisecond)
	}
	first, second := a, b
	if b.e.IsLeader() {
		first, second = b, a
	}
	waitFor(t, "the leader's run function", func() bool { return first.running.Load() == 1 })
	if second.terms.Load() != 0 {
		t.Fatalf("%s ran leader work without leading", second.e.Identity())
	}
	lease, err := client.CoordinationV1().Leases("istio-system").Get(context.Background(), DefaultName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := *lease.Spec.HolderIdentity; got != first.e.Identity() {
		t.Fatalf("lease held by %q, want %q", got, first.e.Identity())
	}

	first.stop(t)
	if first.e.IsLeader() || first.running.Load() != 0 {
		t.Fatalf("%s still leads (%v) or runs leader work (%d) after Run returned", first.e.Identity(),
			first.e.IsLeader(), first.running.Load())
	}
	// Released on cancel: the takeover does not wait for the lease to expire (2s), only for a retry.
	waitFor(t, "the second elector to take over", func() bool { return second.e.IsLeader() })
	waitFor(t, "the new leader's run function", func() bool { return second.running.Load() == 1 })
	if second.terms.Load() != 1 {
		t.Fatalf("%s started its run function %d times, want 1", second.e.Identity(), second.terms.Load())
	}
}

// A leader that stops renewing without releasing (a crashed replica) is replaced once the lease expires.
func TestTakeoverAfterExpiry(t *testing.T) {
	client := fake.NewClientset()
	// A lease held by a replica that no longer runs, renewed just now.
	now := metav1.NewMicroTime(time.Now())
	holder, secs := "crashed", int32(1)
	if _, err := client.CoordinationV1().Leases("istio-system").Create(context.Background(), leaseFor(holder, secs, now), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := start(t, client, "meshd-c")
	waitFor(t, "takeover of the expired lease", func() bool { return c.e.IsLeader() })
	if c.terms.Load() == 0 {
		waitFor(t, "the run function", func() bool { return c.terms.Load() == 1 })
	}
}

func TestAddRunFunctionWhileLeading(t *testing.T) {
	client := fake.NewClientset()
	c := start(t, client, "meshd-d")
	waitFor(t, "leadership", func() bool { return c.e.IsLeader() })
	var late atomic.Bool
	stopped := make(chan struct{})
	c.e.AddRunFunction(func(stop <-chan struct{}) {
		late.Store(true)
		<-stop
		close(stopped)
	})
	waitFor(t, "the late run function", late.Load)
	c.stop(t)
	select {
	case <-stopped:
	default:
		t.Fatal("Run returned before the late run function stopped")
	}
}

func TestOptionDefaults(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "mesh-ns")
	t.Setenv("POD_NAME", "meshd-7f9")
	e, err := New(fake.NewClientset(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e.opts.Namespace != "mesh-ns" || e.opts.Identity != "meshd-7f9" || e.opts.Name != DefaultName {
		t.Fatalf("options %+v", e.opts)
	}
	if _, err := New(fake.NewClientset(), Options{Identity: "x", LeaseDuration: time.Second, RenewDeadline: 2 * time.Second}); err == nil {
		t.Fatal("a renew deadline beyond the lease duration was accepted")
	}
}

func leaseFor(holder string, seconds int32, renewed metav1.MicroTime) *coordinationv1.Lease {
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: DefaultName},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       &holder,
			LeaseDurationSeconds: &seconds,
			AcquireTime:          &renewed,
			RenewTime:            &renewed,
		},
	}
}
