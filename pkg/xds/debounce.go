package xds

import (
	"time"

	"github.com/meshd/meshd/pkg/model"
)

// DebounceOptions tune how config events are merged into pushes (Istio's PILOT_DEBOUNCE_AFTER / _MAX).
type DebounceOptions struct {
	// After is the quiet period: a push happens once no event arrived for this long.
	After time.Duration
	// Max bounds the delay of the first event in a burst.
	Max time.Duration
	// EDS debounces endpoint-only changes too; when false they are pushed at once.
	EDS bool
}

// DefaultDebounce returns Istio's defaults.
func DefaultDebounce() DebounceOptions {
	return DebounceOptions{After: 100 * time.Millisecond, Max: 10 * time.Second, EDS: true}
}

// debounce merges requests from ch and calls push with the merged request once events have been quiet for
// opts.After, or opts.Max after the first one. Only one push runs at a time: requests arriving meanwhile are
// merged into the next one. It returns when stop is closed.
func debounce(ch <-chan *model.PushRequest, stop <-chan struct{}, opts DebounceOptions, push func(*model.PushRequest)) {
	var (
		timer        <-chan time.Time
		merged       *model.PushRequest
		firstEvent   time.Time
		lastEvent    time.Time
		pushing      bool
		pushFinished = make(chan struct{}, 1)
	)
	// immediate: the merged request holds only endpoint changes and EDS debouncing is off.
	immediate := func() bool { return merged != nil && !merged.Full && !opts.EDS }
	check := func() {
		if merged == nil || pushing {
			// A push in flight re-checks when it finishes.
			return
		}
		quiet := time.Since(lastEvent)
		if immediate() || quiet >= opts.After || time.Since(firstEvent) >= opts.Max {
			req := merged
			merged, timer, pushing = nil, nil, true
			debounceTime.Observe(time.Since(firstEvent).Seconds())
			go func() {
				push(req)
				pushFinished <- struct{}{}
			}()
			return
		}
		timer = time.After(min(opts.After-quiet, opts.Max-time.Since(firstEvent)))
	}
	for {
		select {
		case <-stop:
			return
		case <-pushFinished:
			pushing = false
			check()
		case req := <-ch:
			lastEvent = time.Now()
			if merged == nil {
				firstEvent = lastEvent
			}
			merged = merged.Merge(req)
			if immediate() {
				check()
			} else if timer == nil && !pushing {
				timer = time.After(min(opts.After, opts.Max))
			}
		case <-timer:
			timer = nil
			check()
		}
	}
}
