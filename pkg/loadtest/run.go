package loadtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/anypb"
)

// Options describe a load run.
type Options struct {
	// Addr is the server's plaintext ADS address.
	Addr string
	// Proxies is how many sidecars to simulate; they connect at ConnectRate per second (0: all at once).
	Proxies     int
	ConnectRate int
	// Namespace of the simulated proxies; their node ids are sidecar~IP~loadtest-N.NS~NS.svc.cluster.local
	// with IPs from 10.200.0.0/16 unless PodIPs gives real workload addresses to cycle through.
	Namespace string
	PodIPs    []string
	// Hold keeps the proxies connected after they are all complete, to observe pushes.
	Hold time.Duration
	// Timeout bounds the wait for every proxy to be complete.
	Timeout time.Duration
}

// Result is what a run measured.
type Result struct {
	Proxies int
	// ToComplete holds, per proxy, the time from stream start to a complete config, sorted.
	ToComplete []time.Duration
	// AllComplete is the time from the first connection to the last proxy being complete.
	AllComplete time.Duration
	Stats       *Stats
}

// Percentile returns the p-th percentile (0..100) of the time to a complete config.
func (r *Result) Percentile(p float64) time.Duration {
	if len(r.ToComplete) == 0 {
		return 0
	}
	i := int(float64(len(r.ToComplete)-1) * p / 100)
	return r.ToComplete[i]
}

func (r *Result) String() string {
	var b strings.Builder
	if r.AllComplete == 0 {
		fmt.Fprintf(&b, "only %d of %d proxies complete", len(r.ToComplete), r.Proxies)
	} else {
		fmt.Fprintf(&b, "%d proxies complete in %v", r.Proxies, r.AllComplete.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, " (p50 %v, p90 %v, p99 %v, max %v per proxy)\n", r.Percentile(50).Round(time.Millisecond), r.Percentile(90).Round(time.Millisecond),
		r.Percentile(99).Round(time.Millisecond), r.Percentile(100).Round(time.Millisecond))
	b.WriteString(r.Stats.String())
	r.Stats.mu.Lock()
	defer r.Stats.mu.Unlock()
	versions := make([]string, 0, len(r.Stats.versions))
	for v := range r.Stats.versions {
		versions = append(versions, v)
	}
	slices.Sort(versions)
	for _, v := range versions {
		s := r.Stats.versions[v]
		fmt.Fprintf(&b, "  push version %s: %d responses spread over %v\n", v, s.proxies, s.last.Sub(s.first).Round(time.Millisecond))
	}
	return b.String()
}

// Run connects the proxies, waits until all hold a complete config (or the timeout), then holds them
// connected for opts.Hold.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Proxies <= 0 {
		return nil, errors.New("proxies must be positive")
	}
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stats := newStats()
	res := &Result{Proxies: opts.Proxies, Stats: stats}
	var (
		mu       sync.Mutex
		done     = make(chan struct{})
		failures = make(chan error, opts.Proxies)
		wg       sync.WaitGroup
	)
	start := time.Now()
	ready := func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		res.ToComplete = append(res.ToComplete, d)
		if len(res.ToComplete) == opts.Proxies {
			res.AllComplete = time.Since(start)
			close(done)
		}
	}
	var tick <-chan time.Time
	if opts.ConnectRate > 0 {
		t := time.NewTicker(time.Second / time.Duration(opts.ConnectRate))
		defer t.Stop()
		tick = t.C
	}
	for i := range opts.Proxies {
		if tick != nil {
			select {
			case <-tick:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		ip := fmt.Sprintf("10.200.%d.%d", i/250, i%250+1)
		if len(opts.PodIPs) > 0 {
			ip = opts.PodIPs[i%len(opts.PodIPs)]
		}
		nodeID := fmt.Sprintf("sidecar~%s~loadtest-%d.%s~%s.svc.cluster.local", ip, i, opts.Namespace, opts.Namespace)
		conn, err := dial(ctx, opts.Addr)
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			p := &proxy{id: nodeID, have: map[string]map[string]*anypb.Any{}, subscribed: map[string]map[string]bool{},
				answered: map[string]bool{}, stats: stats}
			if err := p.run(ctx, conn, nodeID, opts.Namespace, ready); err != nil {
				failures <- fmt.Errorf("%s: %w", nodeID, err)
			}
		}()
	}
	var err error
	select {
	case <-done:
		select {
		case <-time.After(opts.Hold):
		case <-ctx.Done():
		}
	case err = <-failures:
	case <-time.After(opts.Timeout):
		mu.Lock()
		err = fmt.Errorf("only %d of %d proxies complete after %v", len(res.ToComplete), opts.Proxies, opts.Timeout)
		mu.Unlock()
	case <-ctx.Done():
		err = ctx.Err()
	}
	cancel()
	wg.Wait()
	mu.Lock()
	slices.Sort(res.ToComplete)
	mu.Unlock()
	return res, err
}
