package kube

import (
	"encoding/json"
	"testing"

	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
)

func mustDecode(t *testing.T, raw []byte, into any) {
	t.Helper()
	if err := json.Unmarshal(raw, into); err != nil {
		t.Fatal(err)
	}
}

func cloneVS(s *networking.VirtualService) *networking.VirtualService {
	return proto.Clone(s).(*networking.VirtualService)
}

func cloneDR(s *networking.DestinationRule) *networking.DestinationRule {
	return proto.Clone(s).(*networking.DestinationRule)
}
