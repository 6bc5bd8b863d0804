package xdsproxy

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

// frame is one gRPC message exactly as it crossed the wire. The proxy relays frames instead of decoded
// DiscoveryRequests and DiscoveryResponses: a full CDS or LDS response is megabytes of nested Anys, and
// decoding it only to encode it again cost more than the rest of the hop.
type frame struct {
	// buf holds one reference of its own, dropped by free; nil until a message is received into it.
	buf mem.Buffer
}

// bytes returns the message; it is valid until free and must not be modified.
func (f *frame) bytes() []byte {
	if f.buf == nil {
		return nil
	}
	return f.buf.ReadOnlyData()
}

// free returns the frame's buffer to its pool once gRPC, which takes its own reference when sending, is
// done with it too.
func (f *frame) free() {
	if f.buf != nil {
		f.buf.Free()
		f.buf = nil
	}
}

// rawCodec moves frames in and out of gRPC untouched. It is forced on the proxy's own streams only (the
// downstream server, which serves nothing but ADS, and the upstream ADS calls): the shared upstream
// connection keeps the proto codec for everything else.
type rawCodec struct{}

var _ encoding.CodecV2 = rawCodec{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("xds proxy codec: cannot send %T, only raw frames", v)
	}
	if f.buf == nil {
		return nil, nil
	}
	// gRPC frees what Marshal returns after writing it, so it gets a reference of its own.
	f.buf.Ref()
	return mem.BufferSlice{f.buf}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("xds proxy codec: cannot receive into %T, only raw frames", v)
	}
	f.free()
	// gRPC frees data when this returns. A message that arrived in one buffer is kept by reference; one
	// split across HTTP/2 frames is joined into a single pooled buffer so the scanners see contiguous bytes.
	f.buf = data.MaterializeToBuffer(mem.DefaultBufferPool())
	return nil
}

// Name is the content-subtype the upstream calls are sent with: the bytes are protobuf, and every xDS
// server accepts "application/grpc+proto".
func (rawCodec) Name() string { return "proto" }
