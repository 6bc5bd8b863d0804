package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// streamKind is what differs between SotW and Delta ADS for a proxy that never decodes their messages.
type streamKind struct {
	name   string // for logs
	method string // the upstream method, the same one the downstream called
	req    requestFields
}

var (
	sotwKind = streamKind{name: "sotw", method: discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResources_FullMethodName,
		req: sotwRequestFields}
	deltaKind = streamKind{name: "delta", method: discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResources_FullMethodName,
		req: deltaRequestFields}
)

// bidiStream describes both ADS methods: bidirectional streams.
var bidiStream = grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// adsServiceDesc registers the downstream ADS service by hand: the generated registration types its
// handlers with decoded messages, while these take raw frames (the server's codec is rawCodec).
func adsServiceDesc(p *Proxy) *grpc.ServiceDesc {
	handler := func(kind streamKind) grpc.StreamHandler {
		return func(_ any, down grpc.ServerStream) error { return p.forward(kind, down) }
	}
	return &grpc.ServiceDesc{
		ServiceName: discoverygrpc.AggregatedDiscoveryService_ServiceDesc.ServiceName,
		Streams: []grpc.StreamDesc{
			{StreamName: "StreamAggregatedResources", Handler: handler(sotwKind), ServerStreams: true, ClientStreams: true},
			{StreamName: "DeltaAggregatedResources", Handler: handler(deltaKind), ServerStreams: true, ClientStreams: true},
		},
		Metadata: discoverygrpc.AggregatedDiscoveryService_ServiceDesc.Metadata,
	}
}

// forward relays one downstream stream over its own upstream stream: requests up on a pump goroutine,
// responses down on the handler's. The streams live and die together: when the upstream ends, the
// downstream ends with its status, so the workload reconnects and re-sends its whole subscription (the
// control plane it reaches next knows nothing of the old stream); when the downstream goes, the upstream
// stream is cancelled.
func (p *Proxy) forward(kind streamKind, down grpc.ServerStream) error {
	ref := p.stats.open()
	defer ref.release()
	log := p.log.With("stream", ref.id, "kind", kind.name)
	log.Debug("downstream stream opened")

	ctx, cancel := context.WithCancel(down.Context())
	defer cancel()
	// WaitForReady: a workload connecting while the control plane is down waits for it (the connection
	// retries with backoff) instead of failing and retrying on its own schedule.
	up, err := p.conn.NewStream(ctx, &bidiStream, kind.method, grpc.WaitForReady(true), grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		return p.streamEnd(down.Context(), log, err, nil)
	}

	sendErr := make(chan error, 1)
	ref.hold()
	p.pumps.Add(1)
	go func() {
		defer p.pumps.Done()
		defer ref.release()
		p.pumpRequests(kind, down, up, cancel, sendErr)
	}()

	for {
		var resp frame
		if err := up.RecvMsg(&resp); err != nil {
			select {
			case serr := <-sendErr:
				return p.streamEnd(down.Context(), log, err, serr)
			default:
				return p.streamEnd(down.Context(), log, err, nil)
			}
		}
		if typeURL := responseTypeURL(resp.bytes()); typeURL != "" {
			p.stats.response(typeURL)
		} else {
			// Relayed anyway: the workload, not the proxy, decides what it accepts.
			log.Debug("response without a readable type_url", "bytes", len(resp.bytes()))
		}
		err := down.SendMsg(&resp)
		resp.free()
		if err != nil {
			log.Debug("downstream stream gone while sending", "error", err)
			return err
		}
	}
}

// pumpRequests relays requests until the downstream ends or the upstream refuses them. It never ends the
// handler itself: a failed upstream send cancels the upstream stream, whose Recv then ends the handler.
func (p *Proxy) pumpRequests(kind streamKind, down grpc.ServerStream, up grpc.ClientStream, cancel context.CancelFunc,
	sendErr chan<- error) {
	for {
		var req frame
		err := down.RecvMsg(&req)
		if errors.Is(err, io.EOF) {
			// The workload half-closed: pass it on and let the control plane end the stream.
			_ = up.CloseSend()
			return
		}
		if err != nil {
			cancel()
			return
		}
		if info, ok := scanRequest(req.bytes(), kind.req); ok {
			p.stats.request(info)
		}
		err = up.SendMsg(&req)
		req.free()
		if err != nil {
			// io.EOF means the upstream stream has ended; its Recv reports why.
			if !errors.Is(err, io.EOF) {
				sendErr <- err
				cancel()
			}
			return
		}
	}
}

// streamEnd turns why the upstream side stopped into the downstream stream's final status. recvErr is the
// upstream Recv (or open) error; sendErr, when set, is an upstream send failure that caused it.
func (p *Proxy) streamEnd(downCtx context.Context, log *slog.Logger, recvErr, sendErr error) error {
	switch {
	case sendErr != nil:
		log.Warn("forwarding a request upstream failed", "error", sendErr)
		return p.upstreamStatus(sendErr)
	case downCtx.Err() != nil:
		log.Debug("downstream stream ended", "reason", downCtx.Err())
		return status.FromContextError(downCtx.Err()).Err()
	case errors.Is(recvErr, io.EOF):
		log.Info("control plane ended the stream")
		return nil
	default:
		log.Warn("upstream stream failed; ending the downstream stream so it reconnects",
			"upstream", p.opts.Upstream, "code", status.Code(recvErr), "error", recvErr)
		return p.upstreamStatus(recvErr)
	}
}

// upstreamStatus keeps the upstream status (code and details, which decide how the workload retries) and
// prefixes its message so the workload's logs say where it came from.
func (p *Proxy) upstreamStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		st = status.New(codes.Internal, err.Error())
	}
	pb := st.Proto()
	pb.Message = fmt.Sprintf("xds proxy: upstream %s: %s", p.opts.Upstream, pb.GetMessage())
	return status.ErrorProto(pb)
}
