package xds

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

// refreshProxy re-resolves the proxy's workload and inbound services when services or config changed.
func (s *DiscoveryServer) refreshProxy(con *Connection, push *model.PushContext) {
	if push == nil || (con.refreshedSeq == push.ConfigSeq() && con.refreshedSeq != 0) {
		return
	}
	con.proxy.SetWorkload(push)
	con.refreshedSeq = push.ConfigSeq()
	name := ""
	if w := con.proxy.Workload; w != nil {
		name = w.Key()
	}
	con.update(func() { con.workload = name })
}

// pushConnection sends what req changed to one proxy, type by type in push order. A type whose previous
// response is not acknowledged yet is not sent now: the ACK triggers one push of the then-latest state.
func (s *DiscoveryServer) pushConnection(con *Connection, req *model.PushRequest) error {
	if req.Full {
		s.refreshProxy(con, req.Push)
	}
	con.mu.RLock()
	types := orderedTypes(con.watches)
	con.mu.RUnlock()
	for _, t := range types {
		if !req.Full && t != model.EndpointType {
			continue
		}
		w := con.watch(t)
		if w.awaitingAck {
			con.update(func() { w.pending = w.pending.Merge(req) })
			continue
		}
		if err := s.respond(con, w, req, false, nil); err != nil {
			return err
		}
	}
	if !req.Start.IsZero() {
		convergenceTime.Observe(time.Since(req.Start).Seconds())
	}
	return nil
}

// respond generates the resources of one watch and sends what the proxy needs. fromRequest marks answers to
// the proxy's own requests, which are sent even when nothing changed. only, when set, restricts generation to
// these newly subscribed names.
func (s *DiscoveryServer) respond(con *Connection, w *watchState, req *model.PushRequest, fromRequest bool, only []string) error {
	push := req.Push
	if push == nil {
		push = s.push.Load()
	}
	s.refreshProxy(con, push)
	if strings.HasPrefix(w.TypeURL, model.DebugTypePrefix) {
		// Debug answers are snapshots taken on request, never pushed.
		if !fromRequest {
			return nil
		}
		return s.sendDebug(con, w)
	}
	gen := s.generator(con.proxy, w.TypeURL)
	if gen == nil {
		if fromRequest {
			s.log.Debug("no generator for requested type", "id", con.ID, "type", w.TypeURL)
		}
		return nil
	}
	watched := w.WatchedResource
	partial := false
	if hosts := updatedHostnames(req); hosts != nil && w.TypeURL == model.EndpointType {
		// An endpoint-only push: regenerate just the clusters of the services that changed.
		watched.Names = nil
		for _, n := range w.Names {
			if _, _, h, _, err := model.ParseSubsetKey(n); err == nil && hosts[h] {
				watched.Names = append(watched.Names, n)
			}
		}
		partial = true
	}
	if only != nil {
		watched.Names, partial = only, true
	}
	if !watched.Wildcard && len(watched.Names) == 0 && !fromRequest {
		return nil
	}
	start := time.Now()
	res, err := gen.Generate(con.proxy, push, &watched, req)
	if err != nil {
		// The proxy keeps what it has; the next push tries again.
		generationErrors.WithLabelValues(model.ShortType(w.TypeURL)).Inc()
		s.log.Error("generating config failed", "id", con.ID, "type", model.ShortType(w.TypeURL), "error", err)
		return nil
	}
	pushTime.WithLabelValues(model.ShortType(w.TypeURL)).Observe(time.Since(start).Seconds())
	for i, r := range res {
		if r.Version == "" {
			res[i] = &discovery.Resource{Name: r.Name, Resource: r.Resource, Version: util.ContentVersion(r.Resource.GetValue())}
		}
	}
	if con.Delta {
		return s.sendDeltaResponse(con, w, push, req, res, &watched, partial, fromRequest, only)
	}
	return s.sendSotwResponse(con, w, push, req, res, partial, fromRequest)
}

func (s *DiscoveryServer) sendSotwResponse(con *Connection, w *watchState, push *model.PushContext, req *model.PushRequest,
	res []*discovery.Resource, partial, fromRequest bool) error {
	hash := contentHash(res, nil)
	if w.nackedHash != 0 && hash == w.nackedHash {
		s.log.Info("not re-sending config the proxy rejected", "id", con.ID, "type", model.ShortType(w.TypeURL))
		return nil
	}
	// Identical content is skipped, except EDS in a full push: Envoy re-warms updated clusters and waits for
	// their endpoints.
	if !fromRequest && !(req.Full && w.TypeURL == model.EndpointType) && unchanged(w, res, partial) {
		return nil
	}
	anys := make([]*anypb.Any, len(res))
	size := 0
	for i, r := range res {
		anys[i] = r.Resource
		size += len(r.Resource.GetValue())
	}
	resp := &discovery.DiscoveryResponse{
		TypeUrl:     w.TypeURL,
		VersionInfo: push.Version,
		Nonce:       newNonce(),
		Resources:   anys,
	}
	if err := con.sendSotw(resp); err != nil {
		return err
	}
	con.update(func() {
		w.NonceSent, w.VersionSent, w.LastSent, w.sentHash, w.awaitingAck = resp.Nonce, resp.VersionInfo, time.Now(), hash, true
		if !partial {
			clear(w.sent)
		}
		for _, r := range res {
			w.sent[r.Name] = r
		}
	})
	s.recordSend(con, w.TypeURL, len(res), size, resp.Nonce, push.Version)
	return nil
}

// unchanged reports whether the proxy already has exactly res (and, for a complete response, nothing else).
func unchanged(w *watchState, res []*discovery.Resource, partial bool) bool {
	if !partial && len(res) != len(w.sent) {
		return false
	}
	if len(w.sent) == 0 && len(res) == 0 {
		return w.NonceSent != ""
	}
	for _, r := range res {
		old := w.sent[r.Name]
		if old == nil || old.Version != r.Version {
			return false
		}
	}
	return true
}

func (s *DiscoveryServer) sendDeltaResponse(con *Connection, w *watchState, push *model.PushContext, req *model.PushRequest,
	res []*discovery.Resource, watched *model.WatchedResource, partial, fromRequest bool, subscribed []string) error {
	present := make(map[string]bool, len(res))
	var changed []*discovery.Resource
	size := 0
	for _, r := range res {
		present[r.Name] = true
		if old := w.sent[r.Name]; old == nil || old.Version != r.Version || w.resend[r.Name] {
			changed = append(changed, r)
			size += len(r.Resource.GetValue())
		}
	}
	// Removed: what the proxy has (or just asked for) in the scope of this response that no longer exists.
	var removed []string
	if watched.Wildcard && !partial {
		for name := range w.sent {
			if !present[name] {
				removed = append(removed, name)
			}
		}
	} else {
		for _, name := range watched.Names {
			if present[name] {
				continue
			}
			if _, had := w.sent[name]; had || slices.Contains(subscribed, name) || fromRequest {
				removed = append(removed, name)
			}
		}
	}
	if len(changed) == 0 && len(removed) == 0 && !fromRequest {
		return nil
	}
	hash := contentHash(changed, removed)
	if w.nackedHash != 0 && hash == w.nackedHash {
		s.log.Info("not re-sending config the proxy rejected", "id", con.ID, "type", model.ShortType(w.TypeURL))
		return nil
	}
	resp := &discovery.DeltaDiscoveryResponse{
		TypeUrl:           w.TypeURL,
		SystemVersionInfo: push.Version,
		Nonce:             newNonce(),
		Resources:         changed,
		RemovedResources:  removed,
	}
	if err := con.sendDelta(resp); err != nil {
		return err
	}
	var eds *watchState
	if w.TypeURL == model.ClusterType && len(changed) > 0 {
		eds = con.watch(model.EndpointType)
	}
	con.update(func() {
		w.NonceSent, w.VersionSent, w.LastSent, w.sentHash, w.awaitingAck = resp.Nonce, push.Version, time.Now(), hash, true
		for _, r := range changed {
			w.sent[r.Name] = r
			delete(w.resend, r.Name)
		}
		for _, n := range removed {
			delete(w.sent, n)
		}
		// A changed cluster is re-warmed by Envoy, which then needs its endpoints even if they did not change.
		if eds != nil {
			for _, r := range changed {
				eds.resend[r.Name] = true
			}
		}
	})
	s.recordSend(con, w.TypeURL, len(changed), size, resp.Nonce, push.Version)
	return nil
}

func (s *DiscoveryServer) recordSend(con *Connection, typeURL string, n, size int, nonce, version string) {
	short := model.ShortType(typeURL)
	xdsPushes.WithLabelValues(short).Inc()
	configSize.WithLabelValues(short).Observe(float64(size))
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("pushed", "id", con.ID, "type", short, "resources", n, "bytes", size, "nonce", nonce, "version", version)
	}
}
