package secrets

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff doubles the delay after each failure up to a maximum, with ±20% jitter so that the sidecars of a
// mesh do not all retry at the same instant after a CA outage.
type backoff struct {
	initial, max, cur time.Duration
}

func newBackoff(initial, maximum time.Duration) *backoff {
	return &backoff{initial: initial, max: maximum, cur: initial}
}

func (b *backoff) next() time.Duration {
	d := b.cur
	b.cur = min(2*b.cur, b.max)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func (b *backoff) reset() { b.cur = b.initial }

// sleep waits d or until ctx is done; false means ctx is done.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
