package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// runADS keeps an ADS stream to the xds-grpc cluster's Unix socket, reconnecting as Envoy does: the agent may
// start its XDS proxy after the proxy, and restarts it with upstream changes.
func runADS(ctx context.Context, b *bootstrapv3.Bootstrap, st *state, log *slog.Logger) {
	socket := ""
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != xdsCluster {
			continue
		}
		for _, le := range c.GetLoadAssignment().GetEndpoints() {
			for _, lb := range le.GetLbEndpoints() {
				if p := lb.GetEndpoint().GetAddress().GetPipe().GetPath(); p != "" {
					socket = p
				}
			}
		}
	}
	if socket == "" {
		log.Error("no Unix socket for cluster " + xdsCluster + "; not connecting")
		return
	}
	delta := b.GetDynamicResources().GetAdsConfig().GetApiType() == corev3.ApiConfigSource_DELTA_GRPC
	last := ""
	for ctx.Err() == nil {
		err := streamOnce(ctx, socket, delta, b.GetNode(), st)
		if ctx.Err() != nil {
			return
		}
		// Only changes are logged: while the socket is missing this repeats every retry.
		if err.Error() != last {
			log.Warn("ADS stream ended; retrying", "socket", socket, "delta", delta, "err", err)
			last = err.Error()
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func streamOnce(ctx context.Context, socket string, delta bool, node *corev3.Node, st *state) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial %s: %w", socket, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	if delta {
		return deltaStream(ctx, ads, node, st)
	}
	return sotwStream(ctx, ads, node, st)
}

// deltaStream subscribes CDS and LDS as wildcards (no names) and ACKs every response.
func deltaStream(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient, node *corev3.Node, st *state) error {
	s, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("open delta stream: %w", err)
	}
	// set_node_on_first_message_only: the node goes on the stream's first request only.
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: clusterType}); err != nil {
		return fmt.Errorf("subscribe CDS: %w", err)
	}
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: listenerType}); err != nil {
		return fmt.Errorf("subscribe LDS: %w", err)
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			return fmt.Errorf("ACK %s: %w", resp.GetTypeUrl(), err)
		}
		st.ack(resp.GetTypeUrl())
	}
}

// sotwStream is deltaStream for state-of-the-world ADS: ACKs carry the version and nonce.
func sotwStream(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient, node *corev3.Node, st *state) error {
	s, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: clusterType}); err != nil {
		return fmt.Errorf("subscribe CDS: %w", err)
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: listenerType}); err != nil {
		return fmt.Errorf("subscribe LDS: %w", err)
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		ack := &discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		if err := s.Send(ack); err != nil {
			return fmt.Errorf("ACK %s: %w", resp.GetTypeUrl(), err)
		}
		st.ack(resp.GetTypeUrl())
	}
}
