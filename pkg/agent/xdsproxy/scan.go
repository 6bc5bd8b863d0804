package xdsproxy

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers the proxy reads from the frames it relays (envoy/service/discovery/v3/discovery.proto).
// type_url is field 4 in both DiscoveryResponse and DeltaDiscoveryResponse.
const responseTypeURLField protowire.Number = 4

// requestFields locates what ACK/NACK accounting needs in one kind of request.
type requestFields struct {
	typeURL, responseNonce, errorDetail protowire.Number
}

var (
	sotwRequestFields  = requestFields{typeURL: 4, responseNonce: 5, errorDetail: 6} // DiscoveryRequest
	deltaRequestFields = requestFields{typeURL: 2, responseNonce: 6, errorDetail: 7} // DeltaDiscoveryRequest
)

// ackInfo is what a request says about the response it answers.
type ackInfo struct {
	typeURL string
	// nonce is empty on a stream's first request and on subscription changes, which are neither ACK nor NACK.
	nonce string
	nack  bool
}

// scanFields calls visit for each top-level length-delimited field of the marshalled message b, in wire
// order, and reports whether b is well-formed at the top level. Other wire types are skipped: protobuf
// treats a known field that arrives with an unexpected wire type as unknown, so they never carry the
// strings or messages the proxy reads.
func scanFields(b []byte, visit func(num protowire.Number, v []byte)) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return false
			}
			visit(num, v)
			b = b[m:]
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return false
		}
		b = b[n:]
	}
	return true
}

// responseTypeURL reads the type_url of a marshalled DiscoveryResponse or DeltaDiscoveryResponse without
// decoding the resources. It returns "" when b is malformed.
func responseTypeURL(b []byte) string {
	var typeURL []byte
	ok := scanFields(b, func(num protowire.Number, v []byte) {
		if num == responseTypeURLField {
			typeURL = v // the last occurrence wins, as when decoding
		}
	})
	if !ok || !utf8.Valid(typeURL) {
		return ""
	}
	return string(typeURL)
}

// scanRequest reads the ACK/NACK fields of a marshalled request of the kind f describes; ok is false when
// b is malformed (the control plane will reject it, and it counts as nothing here).
func scanRequest(b []byte, f requestFields) (info ackInfo, ok bool) {
	var typeURL, nonce []byte
	ok = scanFields(b, func(num protowire.Number, v []byte) {
		switch num {
		case f.typeURL:
			typeURL = v
		case f.responseNonce:
			nonce = v
		case f.errorDetail:
			// A present error_detail, even an empty one, makes the request a NACK.
			info.nack = true
		}
	})
	if !ok || !utf8.Valid(typeURL) || !utf8.Valid(nonce) {
		return ackInfo{}, false
	}
	info.typeURL, info.nonce = string(typeURL), string(nonce)
	return info, true
}
