package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/meshd/meshd/pkg/dns/nds"
)

// Reconnect backoff of Watch: doubling from the first delay up to the cap, reset once a stream delivers a table.
const (
	watchBackoffInitial = 100 * time.Millisecond
	watchBackoffMax     = 15 * time.Second
)

// ndsResourceNames is what Watch subscribes to: nothing named, a wildcard subscription, as Istio's agent asks
// (meshd and istiod both treat the name table as a wildcard type).
var ndsResourceNames []string

// Watch keeps a State-of-the-World ADS stream for the name table open on conn, presenting node. Every table
// received is applied to s and ACKed; one that does not decode is NACKed (error_detail, the last good version)
// and s keeps its table. A broken stream is reopened with backoff until ctx ends; s keeps serving the last table
// meanwhile.
func Watch(ctx context.Context, conn grpc.ClientConnInterface, node *corev3.Node, s *Server, log *slog.Logger) {
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "nds")
	client := discovery.NewAggregatedDiscoveryServiceClient(conn)
	delay := watchBackoffInitial
	for {
		received, err := watchStream(ctx, client, node, s, log)
		if ctx.Err() != nil {
			return
		}
		if received {
			delay = watchBackoffInitial
		}
		// Jitter spreads the reconnects of every pod in the mesh after a control plane restart.
		wait := delay/2 + rand.N(delay/2+1)
		log.Warn("name table stream ended, reconnecting", "error", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, watchBackoffMax)
	}
}

// watchStream runs one stream until it fails, reporting whether any table arrived on it.
func watchStream(ctx context.Context, client discovery.AggregatedDiscoveryServiceClient, node *corev3.Node,
	s *Server, log *slog.Logger,
) (received bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("open ADS stream: %w", err)
	}
	err = stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: nds.TypeURL, ResourceNames: ndsResourceNames})
	if err != nil {
		return false, fmt.Errorf("send NameTable request: %w", err)
	}
	applied := "" // version of the table s holds from this stream, echoed in NACKs
	for {
		resp, err := stream.Recv()
		if err != nil {
			return received, fmt.Errorf("receive NameTable: %w", err)
		}
		if resp.GetTypeUrl() != nds.TypeURL {
			log.Debug("ignoring response of another type", "type", resp.GetTypeUrl())
			continue
		}
		next := &discovery.DiscoveryRequest{TypeUrl: nds.TypeURL, ResourceNames: ndsResourceNames, ResponseNonce: resp.GetNonce()}
		t, err := decodeTable(resp)
		if err != nil {
			log.Warn("rejecting name table", "version", resp.GetVersionInfo(), "error", err)
			next.VersionInfo = applied
			next.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		} else {
			s.UpdateTable(t)
			received = true
			applied = resp.GetVersionInfo()
			next.VersionInfo = applied
			log.Debug("applied name table", "version", applied, "hosts", len(t.Table))
		}
		if err := stream.Send(next); err != nil {
			return received, fmt.Errorf("send NameTable ACK: %w", err)
		}
	}
}

// decodeTable reads the table from a response. Istio sends one resource; several are merged (a later entry for
// the same host wins) and none means an empty table, as State of the World says.
func decodeTable(resp *discovery.DiscoveryResponse) (*nds.NameTable, error) {
	out := &nds.NameTable{Table: map[string]*nds.NameInfo{}}
	var errs []error
	for i, a := range resp.GetResources() {
		t, err := nds.FromAny(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("resource %d: %w", i, err))
			continue
		}
		for h, ni := range t.Table {
			out.Table[h] = ni
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}
