package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// adsServer serves the downstream side; it is separate from Proxy to keep the gRPC handlers out of Proxy's
// exported API.
type adsServer struct {
	p *Proxy
}

func (a *adsServer) StreamAggregatedResources(down grpc.BidiStreamingServer[discovery.DiscoveryRequest, discovery.DiscoveryResponse]) error {
	return forward(a.p, "sotw", down, a.p.ads.StreamAggregatedResources,
		func(r *discovery.DiscoveryRequest) { a.p.stats.request(r) },
		func(r *discovery.DiscoveryResponse) { a.p.stats.response(r.GetTypeUrl()) })
}

func (a *adsServer) DeltaAggregatedResources(down grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]) error {
	return forward(a.p, "delta", down, a.p.ads.DeltaAggregatedResources,
		func(r *discovery.DeltaDiscoveryRequest) { a.p.stats.request(r) },
		func(r *discovery.DeltaDiscoveryResponse) { a.p.stats.response(r.GetTypeUrl()) })
}

// openFunc opens the upstream stream of the downstream's kind on the shared connection.
type openFunc[Req, Resp any] func(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[Req, Resp], error)

// forward relays one downstream stream over its own upstream stream: requests up on a pump goroutine,
// responses down on the handler's. The streams live and die together: when the upstream ends, the
// downstream ends with its status, so the workload reconnects and re-sends its whole subscription (the
// control plane it reaches next knows nothing of the old stream); when the downstream goes, the upstream
// stream is cancelled.
func forward[Req, Resp any](p *Proxy, kind string, down grpc.BidiStreamingServer[Req, Resp], open openFunc[Req, Resp],
	onReq func(*Req), onResp func(*Resp)) error {
	ref := p.stats.open()
	defer ref.release()
	log := p.log.With("stream", ref.id, "kind", kind)
	log.Debug("downstream stream opened")

	ctx, cancel := context.WithCancel(down.Context())
	defer cancel()
	// WaitForReady: a workload connecting while the control plane is down waits for it (the connection
	// retries with backoff) instead of failing and retrying on its own schedule.
	up, err := open(ctx, grpc.WaitForReady(true))
	if err != nil {
		return p.streamEnd(down.Context(), log, err, nil)
	}

	sendErr := make(chan error, 1)
	ref.hold()
	p.pumps.Add(1)
	go func() {
		defer p.pumps.Done()
		defer ref.release()
		pumpRequests(down, up, onReq, cancel, sendErr)
	}()

	for {
		resp, err := up.Recv()
		if err != nil {
			select {
			case serr := <-sendErr:
				return p.streamEnd(down.Context(), log, err, serr)
			default:
				return p.streamEnd(down.Context(), log, err, nil)
			}
		}
		onResp(resp)
		if err := down.Send(resp); err != nil {
			log.Debug("downstream stream gone while sending", "error", err)
			return err
		}
	}
}

// pumpRequests relays requests until the downstream ends or the upstream refuses them. It never ends the
// handler itself: a failed upstream send cancels the upstream stream, whose Recv then ends the handler.
func pumpRequests[Req, Resp any](down grpc.BidiStreamingServer[Req, Resp], up grpc.BidiStreamingClient[Req, Resp],
	onReq func(*Req), cancel context.CancelFunc, sendErr chan<- error) {
	for {
		req, err := down.Recv()
		if errors.Is(err, io.EOF) {
			// The workload half-closed: pass it on and let the control plane end the stream.
			_ = up.CloseSend()
			return
		}
		if err != nil {
			cancel()
			return
		}
		onReq(req)
		if err := up.Send(req); err != nil {
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
