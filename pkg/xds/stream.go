package xds

import (
	"context"
	"errors"
	"io"
	"slices"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/pkg/model"
)

// xdsRequest is what SotW and Delta requests have in common.
type xdsRequest interface {
	GetNode() *core.Node
	GetTypeUrl() string
}

// StreamAggregatedResources serves State-of-the-World ADS.
func (s *DiscoveryServer) StreamAggregatedResources(stream discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return s.serve(stream.Context(), false,
		func() (xdsRequest, error) { return stream.Recv() },
		func(c *Connection, r xdsRequest) error { return s.handleSotw(c, r.(*discovery.DiscoveryRequest)) },
		func(c *Connection) {
			c.sendSotw = stream.Send
		})
}

// DeltaAggregatedResources serves incremental (Delta) ADS.
func (s *DiscoveryServer) DeltaAggregatedResources(stream discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return s.serve(stream.Context(), true,
		func() (xdsRequest, error) { return stream.Recv() },
		func(c *Connection, r xdsRequest) error { return s.handleDelta(c, r.(*discovery.DeltaDiscoveryRequest)) },
		func(c *Connection) {
			c.sendDelta = stream.Send
		})
}

// serve runs one stream: it authenticates nothing (15010 is plaintext), identifies the proxy from the first
// request, then processes requests and pushes on this goroutine until the stream ends.
func (s *DiscoveryServer) serve(ctx context.Context, delta bool, recv func() (xdsRequest, error),
	handle func(*Connection, xdsRequest) error, bind func(*Connection)) error {
	if !s.Ready() {
		// Proxies retry on Unavailable; an empty mesh would make them drop working config.
		return status.Error(codes.Unavailable, "meshd is not ready: no configuration has been loaded yet")
	}
	first, err := recv()
	if err != nil {
		return closeError(err)
	}
	node := first.GetNode()
	if node.GetId() == "" {
		return status.Error(codes.InvalidArgument, "the first request of a stream must carry node.id")
	}
	proxy, err := model.ParseProxy(node.GetId(), node.GetMetadata())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	caller, authenticated := CallerFrom(ctx)
	if authenticated {
		if err := authorize(caller, proxy, s.push.Load()); err != nil {
			xdsAuthzFailures.Inc()
			s.log.Warn("proxy refused", "node", proxy.ID, "caller", caller.Identity, "error", err)
			return status.Error(codes.PermissionDenied, err.Error())
		}
	}
	addr := ""
	if p, ok := peer.FromContext(ctx); ok {
		addr = p.Addr.String()
	}
	con := newConnection(s.newConnectionID(proxy), proxy, addr, delta)
	if authenticated {
		con.caller = &caller
	}
	bind(con)
	s.refreshProxy(con, s.push.Load())
	s.addConnection(con)
	defer func() {
		close(con.stop)
		s.removeConnection(con)
		s.log.Info("proxy disconnected", "id", con.ID)
	}()
	s.log.Info("proxy connected", "id", con.ID, "peer", addr, "delta", delta, "generator", proxy.Metadata.Generator)

	reqs := make(chan xdsRequest, 1)
	errs := make(chan error, 1)
	go func() {
		for {
			r, err := recv()
			if err != nil {
				errs <- err
				return
			}
			select {
			case reqs <- r:
			case <-con.stop:
				return
			}
		}
	}()
	if err := handle(con, first); err != nil {
		return err
	}
	for {
		select {
		case r := <-reqs:
			if err := handle(con, r); err != nil {
				return err
			}
		case ev := <-con.pushes:
			err := s.pushConnection(con, ev.req)
			ev.done()
			if err != nil {
				return err
			}
		case err := <-errs:
			return closeError(err)
		case <-ctx.Done():
			return nil
		}
	}
}

// closeError maps the normal ways a client ends a stream to a clean return.
func closeError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return nil
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.Canceled {
		return nil
	}
	return err
}

// isWildcardType: a request without names means "everything for me" for listeners, clusters and the name
// table (Istio's agent asks for NDS without names).
func isWildcardType(t string) bool {
	return t == model.ListenerType || t == model.ClusterType || t == model.NameTableType
}

// requestPush is the request under which a proxy's own request is answered: everything, from the latest push.
func (s *DiscoveryServer) requestPush() *model.PushRequest {
	return &model.PushRequest{Full: true, Push: s.push.Load(), Start: time.Now(),
		Reason: map[model.TriggerReason]int{model.ReasonProxyUpdate: 1}}
}

func (s *DiscoveryServer) handleSotw(con *Connection, r *discovery.DiscoveryRequest) error {
	t := r.TypeUrl
	if t == "" {
		return status.Error(codes.InvalidArgument, "request without type_url")
	}
	w := con.watch(t)
	if r.ErrorDetail != nil {
		if w == nil || r.ResponseNonce != w.NonceSent {
			xdsExpiredNonce.WithLabelValues(model.ShortType(t)).Inc()
			return nil
		}
		s.recordNack(con, w, r.ResponseNonce, r.ErrorDetail.GetMessage())
		return s.flushPending(con, w)
	}
	if r.ResponseNonce == "" || w == nil {
		// A new watch, or a proxy that reconnected with state from another server: answer in full.
		w = newWatch(t, r.ResourceNames, len(r.ResourceNames) == 0 && isWildcardType(t))
		con.setWatch(w)
		return s.respond(con, w, s.requestPush(), true, nil)
	}
	if r.ResponseNonce != w.NonceSent {
		// An ACK of an older response: a newer one is in flight and will be acknowledged on its own.
		xdsExpiredNonce.WithLabelValues(model.ShortType(t)).Inc()
		return nil
	}
	s.recordAck(con, w, r.ResponseNonce, r.VersionInfo)
	if !w.Wildcard {
		names := slices.Compact(slices.Sorted(slices.Values(r.ResourceNames)))
		if !slices.Equal(names, w.Names) {
			con.update(func() { w.setNames(names) })
			if len(names) == 0 {
				// Unsubscribed from everything of this type: nothing to send.
				con.update(func() { clear(w.sent); w.pending = nil })
				return nil
			}
			return s.respond(con, w, s.requestPush(), true, nil)
		}
	}
	return s.flushPending(con, w)
}

func (s *DiscoveryServer) handleDelta(con *Connection, r *discovery.DeltaDiscoveryRequest) error {
	t := r.TypeUrl
	if t == "" {
		return status.Error(codes.InvalidArgument, "request without type_url")
	}
	w := con.watch(t)
	acked := false
	if r.ResponseNonce != "" && w != nil {
		switch {
		case r.ResponseNonce != w.NonceSent:
			xdsExpiredNonce.WithLabelValues(model.ShortType(t)).Inc()
		case r.ErrorDetail != nil:
			s.recordNack(con, w, r.ResponseNonce, r.ErrorDetail.GetMessage())
			acked = true
		default:
			s.recordAck(con, w, r.ResponseNonce, "")
			acked = true
		}
	}
	if w == nil {
		subscribe := slices.DeleteFunc(slices.Clone(r.ResourceNamesSubscribe), func(n string) bool { return n == "*" })
		wildcard := isWildcardType(t) && (len(r.ResourceNamesSubscribe) == 0 || len(subscribe) < len(r.ResourceNamesSubscribe))
		w = newWatch(t, subscribe, wildcard)
		// On reconnect the proxy says what it has; only differences are sent.
		for name, v := range r.InitialResourceVersions {
			w.sent[name] = &discovery.Resource{Name: name, Version: v}
		}
		con.setWatch(w)
		return s.respond(con, w, s.requestPush(), true, nil)
	}
	var added []string
	wildcardAdded := false
	if len(r.ResourceNamesSubscribe) > 0 || len(r.ResourceNamesUnsubscribe) > 0 {
		con.update(func() {
			names := map[string]bool{}
			for _, n := range w.Names {
				names[n] = true
			}
			for _, n := range r.ResourceNamesUnsubscribe {
				if n == "*" {
					w.Wildcard = false
					continue
				}
				delete(names, n)
				delete(w.sent, n)
			}
			for _, n := range r.ResourceNamesSubscribe {
				if n == "*" {
					wildcardAdded = !w.Wildcard
					w.Wildcard = true
				} else if !names[n] {
					names[n] = true
					added = append(added, n)
				}
			}
			w.setNames(model.SortedKeys(names))
		})
	}
	switch {
	case wildcardAdded:
		return s.respond(con, w, s.requestPush(), true, nil)
	case len(added) > 0 && !w.Wildcard:
		return s.respond(con, w, s.requestPush(), true, added)
	case acked:
		return s.flushPending(con, w)
	}
	return nil
}

func (s *DiscoveryServer) recordAck(con *Connection, w *watchState, nonce, version string) {
	con.update(func() {
		w.NonceAcked, w.LastAcked, w.awaitingAck = nonce, time.Now(), false
		if version != "" {
			w.VersionAcked = version
		} else {
			w.VersionAcked = w.VersionSent
		}
	})
}

func (s *DiscoveryServer) recordNack(con *Connection, w *watchState, nonce, msg string) {
	xdsRejects.WithLabelValues(model.ShortType(w.TypeURL)).Inc()
	s.log.Warn("proxy rejected config", "id", con.ID, "type", model.ShortType(w.TypeURL), "nonce", nonce, "error", msg)
	con.update(func() {
		w.NackNonce, w.NackError, w.LastNack = nonce, msg, time.Now()
		w.nackedHash, w.awaitingAck = w.sentHash, false
	})
}

// flushPending sends, once, the latest state for pushes that waited for this ACK.
func (s *DiscoveryServer) flushPending(con *Connection, w *watchState) error {
	if w.pending == nil {
		return nil
	}
	req := w.pending
	con.update(func() { w.pending = nil })
	latest := *req
	latest.Push = s.push.Load()
	return s.respond(con, w, &latest, false, nil)
}
