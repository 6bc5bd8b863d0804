// Package testutil holds the helpers meshd's tests share: polling with a deadline (never sleeping as
// synchronisation) and recording the push requests a source sends.
package testutil

import (
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/model"
)

// Eventually polls cond until it holds, failing t when timeout passes first.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond) // the polling interval, not synchronisation
	}
}

// Recorder keeps every push request a source sends; Record is the source's onChange callback.
type Recorder struct {
	mu   sync.Mutex
	reqs []*model.PushRequest
}

// Record appends a request.
func (r *Recorder) Record(req *model.PushRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req)
}

// Count returns how many requests were recorded.
func (r *Recorder) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

// At returns request i.
func (r *Recorder) At(i int) *model.PushRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reqs[i]
}

// Merged returns the requests after the first n merged into one (nil if none), and the count.
func (r *Recorder) Merged(n int) (*model.PushRequest, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var m *model.PushRequest
	for _, q := range r.reqs[n:] {
		m = m.Merge(q)
	}
	return m, len(r.reqs)
}

// Next waits (up to 10s) for request number from and returns it.
func (r *Recorder) Next(t testing.TB, from int) *model.PushRequest {
	t.Helper()
	Eventually(t, 10*time.Second, "a push request", func() bool { return r.Count() > from })
	return r.At(from)
}

// WaitMerged waits (up to 10s) for a request after the first n and returns those after n merged.
func (r *Recorder) WaitMerged(t testing.TB, n int) *model.PushRequest {
	t.Helper()
	Eventually(t, 10*time.Second, "a push", func() bool { return r.Count() > n })
	m, _ := r.Merged(n)
	return m
}
