// Package leaderelection elects one meshd replica to do the work that must not run twice (writing status,
// creating shared objects), with a coordination.k8s.io Lease as the lock. It wraps client-go's leader election
// and keeps campaigning: a replica that loses the lease stops its leader work and tries again.
package leaderelection

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Defaults. The lease name is meshd's own, so that meshd and istiod running side by side (during a migration)
// do not take turns leading each other's work.
const (
	DefaultName          = "meshd-leader"
	DefaultNamespace     = "istio-system"
	DefaultLeaseDuration = 30 * time.Second
	DefaultRenewDeadline = 15 * time.Second
	DefaultRetryPeriod   = 5 * time.Second
)

// Options configure an Elector. Zero values take the defaults.
type Options struct {
	// Namespace of the Lease: POD_NAMESPACE, else istio-system.
	Namespace string
	// Name of the Lease, DefaultName when empty.
	Name string
	// Identity of this replica in the Lease: POD_NAME, else the hostname.
	Identity string
	// LeaseDuration is how long followers wait after the last renewal before taking over; RenewDeadline is how
	// long the leader keeps retrying a renewal before giving up; RetryPeriod is the wait between attempts.
	LeaseDuration time.Duration
	RenewDeadline time.Duration
	RetryPeriod   time.Duration
	Logger        *slog.Logger
}

// Elector runs the election and the functions only the leader runs.
type Elector struct {
	client kubernetes.Interface
	opts   Options
	log    *slog.Logger

	leader atomic.Bool

	mu      sync.Mutex
	fns     []func(stop <-chan struct{})
	term    context.Context // the current leadership term; nil when not leading
	running sync.WaitGroup  // run functions of the current term
	started bool
}

// New returns an elector; Run starts campaigning.
func New(client kubernetes.Interface, opts Options) (*Elector, error) {
	if client == nil {
		return nil, errors.New("leader election: no Kubernetes client")
	}
	if opts.Namespace == "" {
		opts.Namespace = os.Getenv("POD_NAMESPACE")
	}
	if opts.Namespace == "" {
		opts.Namespace = DefaultNamespace
	}
	if opts.Name == "" {
		opts.Name = DefaultName
	}
	if opts.Identity == "" {
		opts.Identity = os.Getenv("POD_NAME")
	}
	if opts.Identity == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("leader election %s/%s: no POD_NAME and no hostname: %w", opts.Namespace, opts.Name, err)
		}
		opts.Identity = h
	}
	if opts.LeaseDuration == 0 {
		opts.LeaseDuration = DefaultLeaseDuration
	}
	if opts.RenewDeadline == 0 {
		opts.RenewDeadline = DefaultRenewDeadline
	}
	if opts.RetryPeriod == 0 {
		opts.RetryPeriod = DefaultRetryPeriod
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	e := &Elector{client: client, opts: opts}
	e.log = opts.Logger.With("component", "leaderelection", "lease", opts.Namespace+"/"+opts.Name, "identity", opts.Identity)
	// Validate the durations now rather than at the first campaign.
	if _, err := e.newLeaderElector(); err != nil {
		return nil, err
	}
	return e, nil
}

// AddRunFunction registers work for the leader. fn runs in its own goroutine each time this replica becomes
// leader and must return soon after stop is closed, which happens when leadership is lost or Run's context ends.
// A function added while this replica leads starts at once.
func (e *Elector) AddRunFunction(fn func(stop <-chan struct{})) *Elector {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fns = append(e.fns, fn)
	if e.term != nil && e.term.Err() == nil {
		e.startLocked(fn, e.term)
	}
	return e
}

// IsLeader reports whether this replica currently leads.
func (e *Elector) IsLeader() bool { return e.leader.Load() }

// Identity is the name this replica uses in the Lease.
func (e *Elector) Identity() string { return e.opts.Identity }

// Run campaigns until ctx is done, leading whenever it holds the Lease. It returns after the run functions of
// the last term have returned. The Lease is released on the way out so that another replica takes over without
// waiting for it to expire.
func (e *Elector) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.started {
		e.mu.Unlock()
		return errors.New("leader election: already running")
	}
	e.started = true
	e.mu.Unlock()
	for ctx.Err() == nil {
		le, err := e.newLeaderElector()
		if err != nil {
			return err
		}
		le.Run(ctx) // returns when leadership is lost or ctx is done
		e.running.Wait()
		if ctx.Err() != nil {
			break
		}
		e.log.Warn("lost leadership, campaigning again")
		select {
		case <-ctx.Done():
		case <-time.After(e.opts.RetryPeriod):
		}
	}
	return nil
}

func (e *Elector) newLeaderElector() (*leaderelection.LeaderElector, error) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: e.opts.Namespace, Name: e.opts.Name},
		Client:     e.client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: e.opts.Identity},
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   e.opts.LeaseDuration,
		RenewDeadline:   e.opts.RenewDeadline,
		RetryPeriod:     e.opts.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            e.opts.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: e.startedLeading,
			OnStoppedLeading: e.stoppedLeading,
			OnNewLeader: func(id string) {
				if id != e.opts.Identity {
					e.log.Info("leader elected", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("leader election %s/%s: %w", e.opts.Namespace, e.opts.Name, err)
	}
	return le, nil
}

// startedLeading runs in its own goroutine (client-go starts it so); term is cancelled when leadership ends.
func (e *Elector) startedLeading(term context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if term.Err() != nil {
		return // lost again before this goroutine ran; stoppedLeading has run or will
	}
	e.term = term
	e.leader.Store(true)
	e.log.Info("became leader", "runFunctions", len(e.fns))
	for _, fn := range e.fns {
		e.startLocked(fn, term)
	}
}

func (e *Elector) startLocked(fn func(stop <-chan struct{}), term context.Context) {
	e.running.Add(1)
	go func() {
		defer e.running.Done()
		fn(term.Done())
	}()
}

func (e *Elector) stoppedLeading() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.leader.Swap(false) {
		e.log.Info("stopped leading")
	}
	e.term = nil
}
