package xds

import (
	"sync"
	"time"

	"github.com/meshd/meshd/pkg/model"
)

// pushQueue holds connections waiting for a push. A connection is in the queue at most once: a new request for
// a queued connection is merged into its pending one, and a request arriving while the connection is being
// pushed is held until MarkDone, so a slow proxy gets the latest state once instead of a backlog.
type pushQueue struct {
	cond     *sync.Cond
	pending  map[*Connection]*model.PushRequest
	enqueued map[*Connection]time.Time
	order    []*Connection
	// processing holds connections handed out by dequeue and not yet done; a request for one of them waits here.
	processing map[*Connection]*model.PushRequest
	closed     bool
}

func newPushQueue() *pushQueue {
	return &pushQueue{
		cond:       sync.NewCond(&sync.Mutex{}),
		pending:    map[*Connection]*model.PushRequest{},
		enqueued:   map[*Connection]time.Time{},
		processing: map[*Connection]*model.PushRequest{},
	}
}

func (q *pushQueue) enqueue(c *Connection, req *model.PushRequest) {
	q.cond.L.Lock()
	defer q.cond.L.Unlock()
	if q.closed {
		return
	}
	if held, ok := q.processing[c]; ok {
		q.processing[c] = held.Merge(req)
		return
	}
	if old, ok := q.pending[c]; ok {
		q.pending[c] = old.Merge(req)
		return
	}
	q.pending[c] = req
	q.enqueued[c] = time.Now()
	q.order = append(q.order, c)
	q.cond.Signal()
}

// dequeue blocks until a connection is ready or the queue is closed (then it returns nil).
func (q *pushQueue) dequeue() (*Connection, *model.PushRequest) {
	q.cond.L.Lock()
	defer q.cond.L.Unlock()
	for len(q.order) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return nil, nil
	}
	c := q.order[0]
	q.order[0] = nil
	q.order = q.order[1:]
	req := q.pending[c]
	queueTime.Observe(time.Since(q.enqueued[c]).Seconds())
	delete(q.pending, c)
	delete(q.enqueued, c)
	q.processing[c] = nil
	return c, req
}

// markDone ends the processing of c; a request that arrived meanwhile is queued now.
func (q *pushQueue) markDone(c *Connection) {
	q.cond.L.Lock()
	held := q.processing[c]
	delete(q.processing, c)
	q.cond.L.Unlock()
	if held != nil {
		q.enqueue(c, held)
	}
}

// remove drops a closed connection.
func (q *pushQueue) remove(c *Connection) {
	q.cond.L.Lock()
	defer q.cond.L.Unlock()
	if _, ok := q.pending[c]; ok {
		delete(q.pending, c)
		delete(q.enqueued, c)
		for i, o := range q.order {
			if o == c {
				q.order = append(q.order[:i], q.order[i+1:]...)
				break
			}
		}
	}
	delete(q.processing, c)
}

func (q *pushQueue) len() int {
	q.cond.L.Lock()
	defer q.cond.L.Unlock()
	return len(q.order)
}

func (q *pushQueue) close() {
	q.cond.L.Lock()
	defer q.cond.L.Unlock()
	q.closed = true
	q.cond.Broadcast()
}

// idle reports whether no connection is queued or being pushed to.
func (q *pushQueue) idle() bool {
	q.cond.L.Lock()
	defer q.cond.L.Unlock()
	return len(q.order) == 0 && len(q.processing) == 0
}
