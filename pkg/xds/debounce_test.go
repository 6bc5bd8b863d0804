package xds

import (
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/model"
)

func runDebounce(t *testing.T, opts DebounceOptions) (chan<- *model.PushRequest, <-chan *model.PushRequest) {
	in := make(chan *model.PushRequest)
	out := make(chan *model.PushRequest, 10)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	go debounce(in, stop, opts, func(r *model.PushRequest) { out <- r })
	return in, out
}

func waitPush(t *testing.T, out <-chan *model.PushRequest) *model.PushRequest {
	t.Helper()
	select {
	case r := <-out:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no push within 10s")
	}
	return nil
}

func TestDebounceMergesABurst(t *testing.T) {
	in, out := runDebounce(t, DebounceOptions{After: 50 * time.Millisecond, Max: 10 * time.Second, EDS: true})
	for range 5 {
		in <- model.NewPushRequest(false, model.ReasonEndpointUpdate)
	}
	in <- model.NewPushRequest(true, model.ReasonConfigUpdate, model.ConfigKey{Kind: model.KindVirtualService, Name: "r", Namespace: "default"})
	r := waitPush(t, out)
	if !r.Full || r.Reason[model.ReasonEndpointUpdate] != 5 || r.Reason[model.ReasonConfigUpdate] != 1 {
		t.Fatalf("merged push = full %v reasons %v; want one full push with 5 endpoint and 1 config triggers", r.Full, r.Reason)
	}
	// The next event starts a new burst: its push carries only itself.
	in <- model.NewPushRequest(false, model.ReasonEndpointUpdate)
	if r := waitPush(t, out); r.Full || r.Reason[model.ReasonEndpointUpdate] != 1 {
		t.Fatalf("second push = full %v reasons %v", r.Full, r.Reason)
	}
}

func TestDebounceMaxBoundsTheDelay(t *testing.T) {
	in, out := runDebounce(t, DebounceOptions{After: time.Hour, Max: 30 * time.Millisecond, EDS: true})
	start := time.Now()
	in <- model.NewPushRequest(true, model.ReasonConfigUpdate)
	waitPush(t, out)
	if time.Since(start) > 5*time.Second {
		t.Fatalf("push after %v despite a 30ms max", time.Since(start))
	}
}

func TestDebounceEDSBypass(t *testing.T) {
	in, out := runDebounce(t, DebounceOptions{After: time.Hour, Max: time.Hour, EDS: false})
	in <- model.NewPushRequest(false, model.ReasonEndpointUpdate)
	if r := waitPush(t, out); r.Full {
		t.Fatal("endpoint push became full")
	}
}

func TestPushQueueMergesAndHoldsDuringProcessing(t *testing.T) {
	q := newPushQueue()
	a, b := &Connection{ID: "a"}, &Connection{ID: "b"}
	q.enqueue(a, model.NewPushRequest(false, model.ReasonEndpointUpdate))
	q.enqueue(b, model.NewPushRequest(false, model.ReasonEndpointUpdate))
	q.enqueue(a, model.NewPushRequest(true, model.ReasonConfigUpdate))
	if q.len() != 2 {
		t.Fatalf("len = %d, want 2 (a merged)", q.len())
	}
	c, r := q.dequeue()
	if c != a || !r.Full || r.Reason[model.ReasonEndpointUpdate] != 1 {
		t.Fatalf("first = %s full=%v reasons=%v", c.ID, r.Full, r.Reason)
	}
	// While a is being pushed, new requests for it wait, merged, until markDone.
	q.enqueue(a, model.NewPushRequest(false, model.ReasonEndpointUpdate))
	q.enqueue(a, model.NewPushRequest(false, model.ReasonEndpointUpdate))
	if c, _ := q.dequeue(); c != b {
		t.Fatalf("second = %s, want b", c.ID)
	}
	if q.len() != 0 {
		t.Fatal("a was queued while still being processed")
	}
	q.markDone(a)
	c, r = q.dequeue()
	if c != a || r.Reason[model.ReasonEndpointUpdate] != 2 {
		t.Fatalf("after markDone: %v reasons %v, want a once with both requests", c.ID, r.Reason)
	}
	q.close()
	if c, _ := q.dequeue(); c != nil {
		t.Fatal("dequeue after close returned a connection")
	}
}
