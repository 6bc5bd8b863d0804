package xdsproxy

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/model"
)

// rawUpstream is a control plane that records each request's bytes and answers with canned bytes, so a
// test sees exactly what crossed the proxy.
type rawUpstream struct {
	reqs  chan []byte // every request received, in order
	resps chan []byte // queued responses; one is sent (if any is queued) after each request
}

func startRawUpstream(t *testing.T) (*rawUpstream, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{reqs: make(chan []byte, 16), resps: make(chan []byte, 16)}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}), grpc.MaxRecvMsgSize(maxMsgSize))
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: discoverygrpc.AggregatedDiscoveryService_ServiceDesc.ServiceName,
		Streams: []grpc.StreamDesc{
			{StreamName: "StreamAggregatedResources", Handler: u.serve, ServerStreams: true, ClientStreams: true},
			{StreamName: "DeltaAggregatedResources", Handler: u.serve, ServerStreams: true, ClientStreams: true},
		},
	}, nil)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return u, lis.Addr().String()
}

func (u *rawUpstream) serve(_ any, st grpc.ServerStream) error {
	for {
		var req frame
		if err := st.RecvMsg(&req); err != nil {
			return nil
		}
		u.reqs <- bytes.Clone(req.bytes())
		req.free()
		select {
		case b := <-u.resps:
			if err := st.SendMsg(&frame{buf: mem.SliceBuffer(b)}); err != nil {
				return err
			}
		default:
		}
	}
}

// field appends a length-delimited field, letting tests write messages no protobuf encoder would:
// fields out of order, repeated scalars, unknown fields.
func field(b []byte, num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
}

// TestRelayUnchanged: requests and responses of both kinds cross the proxy byte for byte, even when no
// protobuf encoder would produce those bytes (a decode and re-encode would reorder and drop them), a
// response split over many HTTP/2 frames included; and the counts still come from the scanned fields.
func TestRelayUnchanged(t *testing.T) {
	for _, kind := range []streamKind{sotwKind, deltaKind} {
		t.Run(kind.name, func(t *testing.T) {
			u, addr := startRawUpstream(t)
			p, sock := startProxy(t, addr)
			conn, err := grpc.NewClient(unixTarget(sock), plaintext,
				grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			st, err := conn.NewStream(ctx, &bidiStream, kind.method, grpc.ForceCodecV2(rawCodec{}))
			if err != nil {
				t.Fatal(err)
			}
			relay := func(req []byte) {
				t.Helper()
				if err := st.SendMsg(&frame{buf: mem.SliceBuffer(req)}); err != nil {
					t.Fatal(err)
				}
				select {
				case got := <-u.reqs:
					if !bytes.Equal(got, req) {
						t.Fatalf("the control plane received %x, the workload sent %x", got, req)
					}
				case <-ctx.Done():
					t.Fatal("the request never reached the control plane")
				}
			}

			// The nonce before the type URL, an unknown field 99, and a 1 MiB resource (field 2 in both kinds:
			// an Any in SotW, a Resource wrapping one in Delta), all valid protobuf.
			resource := field(field(nil, 1, []byte(model.ClusterType)), 2, bytes.Repeat([]byte{0x55}, 1<<20))
			if kind.name == "delta" {
				resource = field(field(nil, 1, []byte("v1")), 2, resource)
			}
			resp := field(nil, 5, []byte("nonce-1"))
			resp = field(resp, 99, []byte("from a newer control plane"))
			resp = field(resp, 4, []byte(model.ClusterType))
			resp = field(resp, 2, resource)
			u.resps <- resp
			relay(field(field(nil, 99, []byte("unknown")), kind.req.typeURL, []byte(model.ClusterType)))
			var got frame
			if err := st.RecvMsg(&got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.bytes(), resp) {
				t.Fatalf("the workload received %d bytes that differ from the control plane's %d", len(got.bytes()), len(resp))
			}
			got.free()

			// An ACK whose nonce precedes its type URL, then a NACK whose type URL is given twice (the last wins).
			relay(field(field(nil, kind.req.responseNonce, []byte("nonce-1")), kind.req.typeURL, []byte(model.ClusterType)))
			nack := field(nil, kind.req.typeURL, []byte(model.ListenerType))
			nack = field(nack, kind.req.errorDetail, nil)
			nack = field(nack, kind.req.responseNonce, []byte("nonce-1"))
			relay(field(nack, kind.req.typeURL, []byte(model.ClusterType)))

			testutil.Eventually(t, 10*time.Second, "the response, ACK and NACK counted", func() bool {
				s := p.Status()
				return s.Types[model.ClusterType] == TypeStats{Responses: 1, ACKs: 1, NACKs: 1} && len(s.Types) == 1
			})
			if !p.Acked(model.ClusterType) {
				t.Error("Acked(CDS) = false after the ACK")
			}
		})
	}
}
