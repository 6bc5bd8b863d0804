package xdsproxy

import (
	"bytes"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/pkg/model"
)

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// bigResources are resources large enough that the scanner has to skip real payload to reach type_url,
// which is marshalled after them.
func bigResources() []*anypb.Any {
	var rs []*anypb.Any
	for i := range 50 {
		rs = append(rs, &anypb.Any{TypeUrl: model.ClusterType, Value: bytes.Repeat([]byte{byte(i)}, 1000+i)})
	}
	return rs
}

// TestResponseTypeURL: type_url is read from marshalled SotW and Delta responses, whatever else they carry.
func TestResponseTypeURL(t *testing.T) {
	var delta []*discovery.Resource
	for _, a := range bigResources() {
		delta = append(delta, &discovery.Resource{Name: "r", Version: "1", Resource: a})
	}
	for name, m := range map[string]proto.Message{
		"sotw": &discovery.DiscoveryResponse{VersionInfo: "v1", Resources: bigResources(), Canary: true,
			TypeUrl: model.ClusterType, Nonce: "n1", ControlPlane: &core.ControlPlane{Identifier: "meshd"}},
		"delta": &discovery.DeltaDiscoveryResponse{SystemVersionInfo: "v1", Resources: delta,
			TypeUrl: model.ClusterType, RemovedResources: []string{"gone"}, Nonce: "n1",
			ControlPlane: &core.ControlPlane{Identifier: "meshd"}},
		"sotw, empty": &discovery.DiscoveryResponse{TypeUrl: model.ListenerType},
	} {
		want := m.(interface{ GetTypeUrl() string }).GetTypeUrl()
		if got := responseTypeURL(marshal(t, m)); got != want {
			t.Errorf("%s: responseTypeURL = %q, want %q", name, got, want)
		}
	}

	// Decoding keeps the last occurrence of a repeated scalar field; so must the scanner.
	b := protowire.AppendString(protowire.AppendTag(nil, 4, protowire.BytesType), model.ListenerType)
	b = append(b, marshal(t, &discovery.DiscoveryResponse{TypeUrl: model.ClusterType})...)
	if got := responseTypeURL(b); got != model.ClusterType {
		t.Errorf("responseTypeURL with two type_urls = %q, want the last, %s", got, model.ClusterType)
	}
}

// TestScanRequest: ACKs, NACKs (even with an empty error_detail) and nonce-less requests are told apart in
// both kinds of request, whose fields are numbered differently.
func TestScanRequest(t *testing.T) {
	for _, c := range []struct {
		name   string
		msg    proto.Message
		fields requestFields
		want   ackInfo
	}{
		{"sotw first request", &discovery.DiscoveryRequest{Node: &core.Node{Id: sidecarID}, TypeUrl: model.ClusterType,
			ResourceNames: []string{"a"}}, sotwRequestFields, ackInfo{typeURL: model.ClusterType}},
		{"sotw ACK", &discovery.DiscoveryRequest{VersionInfo: "v1", TypeUrl: model.ClusterType, ResponseNonce: "n1"},
			sotwRequestFields, ackInfo{typeURL: model.ClusterType, nonce: "n1"}},
		{"sotw NACK", &discovery.DiscoveryRequest{TypeUrl: model.ListenerType, ResponseNonce: "n2",
			ErrorDetail: &rpcstatus.Status{Code: 3, Message: "bad"}}, sotwRequestFields,
			ackInfo{typeURL: model.ListenerType, nonce: "n2", nack: true}},
		{"sotw NACK, empty error_detail", &discovery.DiscoveryRequest{TypeUrl: model.ListenerType, ResponseNonce: "n3",
			ErrorDetail: &rpcstatus.Status{}}, sotwRequestFields, ackInfo{typeURL: model.ListenerType, nonce: "n3", nack: true}},
		{"delta first request", &discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: sidecarID}, TypeUrl: model.ClusterType,
			ResourceNamesSubscribe: []string{"*"}, InitialResourceVersions: map[string]string{"a": "1"}},
			deltaRequestFields, ackInfo{typeURL: model.ClusterType}},
		{"delta ACK", &discovery.DeltaDiscoveryRequest{TypeUrl: model.ClusterType, ResponseNonce: "n1"},
			deltaRequestFields, ackInfo{typeURL: model.ClusterType, nonce: "n1"}},
		{"delta NACK", &discovery.DeltaDiscoveryRequest{TypeUrl: model.ClusterType, ResponseNonce: "n2",
			ErrorDetail: &rpcstatus.Status{Code: 3}}, deltaRequestFields,
			ackInfo{typeURL: model.ClusterType, nonce: "n2", nack: true}},
	} {
		got, ok := scanRequest(marshal(t, c.msg), c.fields)
		if !ok || got != c.want {
			t.Errorf("%s: scanRequest = %+v, %v; want %+v", c.name, got, ok, c.want)
		}
	}
}

// malformed are inputs no protobuf decoder accepts at the top level.
var malformed = map[string][]byte{
	"truncated tag":        {0x80},
	"field number 0":       {0x02, 0x00},
	"length past the end":  append(protowire.AppendTag(nil, 4, protowire.BytesType), 0x10, 'a'),
	"truncated length":     append(protowire.AppendTag(nil, 4, protowire.BytesType), 0xff),
	"truncated varint":     append(protowire.AppendTag(nil, 3, protowire.VarintType), 0xff, 0xff),
	"unterminated group":   protowire.AppendTag(nil, 9, protowire.StartGroupType),
	"stray end group":      protowire.AppendTag(nil, 9, protowire.EndGroupType),
	"reserved wire type 6": {0x26},
	// A complete field followed by junk: the scanner must not report what it read before failing.
	"type_url then junk": append(protowire.AppendString(protowire.AppendTag(nil, 4, protowire.BytesType), model.ClusterType),
		0xff, 0xff, 0xff),
}

// invalidUTF8 is a string field no proto3 decoder accepts.
func invalidUTF8(num protowire.Number) []byte {
	return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), "\xff\xfe")
}

// TestScanMalformed: garbage neither panics nor yields a type URL, nonce or NACK.
func TestScanMalformed(t *testing.T) {
	for name, b := range malformed {
		if got := responseTypeURL(b); got != "" {
			t.Errorf("%s: responseTypeURL = %q, want \"\"", name, got)
		}
		for _, f := range []requestFields{sotwRequestFields, deltaRequestFields} {
			if got, ok := scanRequest(b, f); ok || got != (ackInfo{}) {
				t.Errorf("%s: scanRequest = %+v, %v; want nothing, false", name, got, ok)
			}
		}
	}
	if got := responseTypeURL(invalidUTF8(responseTypeURLField)); got != "" {
		t.Errorf("responseTypeURL of an invalid UTF-8 type_url = %q", got)
	}
	for _, f := range []requestFields{sotwRequestFields, deltaRequestFields} {
		for _, num := range []protowire.Number{f.typeURL, f.responseNonce} {
			if got, ok := scanRequest(invalidUTF8(num), f); ok || got != (ackInfo{}) {
				t.Errorf("scanRequest of invalid UTF-8 in field %d = %+v, %v; want nothing, false", num, got, ok)
			}
		}
	}
	// Every truncation of a real response either parses as a shorter message or is rejected; none panics.
	full := marshal(t, &discovery.DiscoveryResponse{VersionInfo: "v1", Resources: bigResources(), TypeUrl: model.ClusterType})
	for n := range len(full) {
		if got := responseTypeURL(full[:n]); got != "" {
			t.Fatalf("responseTypeURL of the first %d of %d bytes = %q; type_url is the last field", n, len(full), got)
		}
	}
}

// FuzzResponseTypeURL: whenever protobuf decodes input as a DiscoveryResponse, the scanner reads the same
// type_url; whatever the input, it does not panic.
func FuzzResponseTypeURL(f *testing.F) {
	f.Add(marshal(f, &discovery.DiscoveryResponse{VersionInfo: "v1", Resources: bigResources()[:2], TypeUrl: model.ClusterType}))
	f.Add(marshal(f, &discovery.DeltaDiscoveryResponse{TypeUrl: model.ListenerType, RemovedResources: []string{"x"}}))
	f.Add(append(protowire.AppendTag(nil, 4, protowire.VarintType), 7))
	for _, b := range malformed {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := responseTypeURL(b)
		var resp discovery.DiscoveryResponse
		if proto.Unmarshal(b, &resp) == nil && got != resp.TypeUrl {
			t.Fatalf("responseTypeURL = %q, protobuf decodes %q", got, resp.TypeUrl)
		}
	})
}

// TestRawCodec: a frame received in several buffers is sent on as the same bytes in one, the frame's
// buffer outlives the gRPC-owned input, and anything but a frame is refused.
func TestRawCodec(t *testing.T) {
	want := []byte(strings.Repeat("0123456789", 5000))
	in := mem.BufferSlice{mem.SliceBuffer(bytes.Clone(want[:7])), mem.SliceBuffer(bytes.Clone(want[7:]))}
	var f frame
	if err := (rawCodec{}).Unmarshal(in, &f); err != nil {
		t.Fatal(err)
	}
	// gRPC may reuse its buffers once Unmarshal returns.
	for _, b := range in {
		clear(b.ReadOnlyData())
	}
	if !bytes.Equal(f.bytes(), want) {
		t.Fatal("the frame does not hold the received bytes")
	}
	out, err := (rawCodec{}).Marshal(&f)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Materialize(), want) {
		t.Fatal("Marshal changed the frame's bytes")
	}
	out.Free()
	f.free()
	if f.bytes() != nil {
		t.Fatal("the frame still has bytes after free")
	}

	if _, err := (rawCodec{}).Marshal(&discovery.DiscoveryResponse{}); err == nil {
		t.Error("Marshal accepted a decoded message")
	}
	if err := (rawCodec{}).Unmarshal(in, &discovery.DiscoveryResponse{}); err == nil {
		t.Error("Unmarshal accepted a decoded message")
	}
}
