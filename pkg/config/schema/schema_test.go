package schema

import (
	"fmt"
	"testing"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/pkg/model"
)

func TestLookup(t *testing.T) {
	tests := []struct {
		apiVersion, kind string
		found            bool
		modelKind        model.Kind
		spec             string // type of NewSpec(), "" for Kubernetes kinds
	}{
		{"networking.istio.io/v1", "VirtualService", true, model.KindVirtualService, "*v1alpha3.VirtualService"},
		{"networking.istio.io/v1beta1", "DestinationRule", true, model.KindDestinationRule, "*v1alpha3.DestinationRule"},
		{"networking.istio.io/v1alpha3", "Gateway", true, model.KindGateway, "*v1alpha3.Gateway"},
		{"networking.istio.io/v1", "ServiceEntry", true, model.KindServiceEntry, "*v1alpha3.ServiceEntry"},
		{"networking.istio.io/v1", "WorkloadEntry", true, model.KindWorkloadEntry, "*v1alpha3.WorkloadEntry"},
		{"networking.istio.io/v1", "Sidecar", true, model.KindSidecar, "*v1alpha3.Sidecar"},
		{"security.istio.io/v1", "PeerAuthentication", true, model.KindPeerAuthentication, "*v1beta1.PeerAuthentication"},
		{"security.istio.io/v1beta1", "AuthorizationPolicy", true, model.KindAuthorizationPolicy, "*v1beta1.AuthorizationPolicy"},
		{"v1", "Service", true, model.KindService, ""},
		{"v1", "Pod", true, model.KindPod, ""},
		{"v1", "ServiceAccount", true, model.KindServiceAccount, ""},
		{"v1", "Namespace", true, model.KindNamespace, ""},
		{"discovery.k8s.io/v1", "EndpointSlice", true, "", ""},
		{"v1", "Endpoints", false, "", ""},
		{"apps/v1", "Deployment", false, "", ""},
		{"v1", "ConfigMap", false, "", ""},
		{"networking.istio.io/v1alpha3", "EnvoyFilter", false, "", ""},
		{"security.istio.io/v1alpha1", "PeerAuthentication", false, "", ""},
		{"networking.istio.io/v2", "VirtualService", false, "", ""},
		{"networking.k8s.io/v1", "Gateway", false, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.apiVersion+"/"+tt.kind, func(t *testing.T) {
			s, ok := Lookup(tt.apiVersion, tt.kind)
			if ok != tt.found {
				t.Fatalf("found = %v, want %v", ok, tt.found)
			}
			if !ok {
				return
			}
			if s.ModelKind != tt.modelKind || s.APIVersion() != tt.apiVersion || s.Kind != tt.kind {
				t.Errorf("schema = %+v", s)
			}
			if tt.spec == "" {
				if s.IsIstio() {
					t.Errorf("Kubernetes kind has a spec constructor")
				}
				return
			}
			if got := fmt.Sprintf("%T", s.NewSpec()); got != tt.spec {
				t.Errorf("NewSpec() is %s, want %s", got, tt.spec)
			}
			if a, b := s.NewSpec(), s.NewSpec(); a == b {
				t.Errorf("NewSpec returns a shared message")
			}
		})
	}
}

func TestKindsAndVersions(t *testing.T) {
	want := []model.Kind{model.KindVirtualService, model.KindDestinationRule, model.KindGateway, model.KindServiceEntry,
		model.KindWorkloadEntry, model.KindSidecar, model.KindPeerAuthentication, model.KindAuthorizationPolicy}
	got := IstioKinds()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("IstioKinds() = %v, want %v", got, want)
	}
	for _, k := range want {
		if s := ForKind(k); s == nil || s.Version != "v1" {
			t.Errorf("ForKind(%s) = %+v, want the v1 schema", k, s)
		}
	}
	if _, ok := ForKind(model.KindGateway).NewSpec().(*networking.Gateway); !ok {
		t.Error("Gateway spec type")
	}
	if _, ok := ForKind(model.KindPeerAuthentication).NewSpec().(*security.PeerAuthentication); !ok {
		t.Error("PeerAuthentication spec type")
	}
	if v := VersionsOf("security.istio.io", "AuthorizationPolicy"); fmt.Sprint(v) != "[security.istio.io/v1 security.istio.io/v1beta1]" {
		t.Errorf("VersionsOf = %v", v)
	}
	if !IsIstioGroup("telemetry.istio.io") || IsIstioGroup("apps") || IsIstioGroup("notistio.io") {
		t.Error("IsIstioGroup")
	}
}
