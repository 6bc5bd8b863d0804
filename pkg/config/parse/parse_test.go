package parse

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/test/corpus"
)

func countKind(data []byte, kind string) int {
	return len(regexp.MustCompile(`(?m)^kind:\s*`+kind+`\s*$`).FindAll(data, -1))
}

// Every file of Istio's samples parses without error; each Istio object becomes a Config with its source and a
// namespace, each Service and ServiceAccount is recognised, and Deployments are skipped, not errors.
func TestParseCorpus(t *testing.T) {
	root := corpus.Dir(t)
	totals := map[string]int{}
	files := 0
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		files++
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		objs, errs := Parse(data, path)
		for _, e := range errs {
			t.Errorf("%v", e)
		}
		for _, c := range objs.Configs {
			totals[string(c.Kind)]++
			if c.Source != path || c.Namespace == "" || c.Name == "" || c.Spec == nil {
				t.Errorf("%s: %s: source %q, namespace %q, name %q, spec %v", path, c, c.Source, c.Namespace, c.Name, c.Spec)
			}
		}
		istio := 0
		for _, k := range []string{"VirtualService", "DestinationRule", "Gateway", "ServiceEntry"} {
			istio += countKind(data, k)
		}
		checks := []struct {
			what      string
			got, want int
		}{
			{"Istio configs", len(objs.Configs), istio},
			{"Services", len(objs.Services), countKind(data, "Service")},
			{"ServiceAccounts", len(objs.ServiceAccounts), countKind(data, "ServiceAccount")},
			{"skipped Deployments", objs.Skipped, countKind(data, "Deployment")},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("%s: %d %s, want %d", path, c.got, c.what, c.want)
			}
		}
		for _, s := range objs.Services {
			totals["Service"]++
			if s.Namespace == "" || len(s.Spec.Ports) == 0 {
				t.Errorf("%s: Service %s: namespace %q, %d ports", path, s.Name, s.Namespace, len(s.Spec.Ports))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 30 {
		t.Fatalf("read only %d corpus files", files)
	}
	for _, k := range []string{"VirtualService", "DestinationRule", "Gateway", "ServiceEntry", "Service"} {
		if totals[k] == 0 {
			t.Errorf("no %s found in the corpus", k)
		}
	}
}

func TestParseDocuments(t *testing.T) {
	const vs = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
`
	tests := []struct {
		name  string
		input string
		// want counts: configs, services, pods, service accounts, namespaces, slices, skipped
		want [7]int
	}{
		{"empty", "", [7]int{}},
		{"comments only", "# nothing\n---\n# here\n", [7]int{}},
		{"one VirtualService", vs, [7]int{1, 0, 0, 0, 0, 0, 0}},
		{"mixed stream with a trailing separator", vs + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n" +
			"apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n--- # comment\n" +
			"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sa}\n---\n" +
			"apiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n" +
			"metadata: {name: e}\naddressType: IPv4\nendpoints: []\n---\n", [7]int{1, 1, 1, 1, 1, 1, 1}},
		{"kind List", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n" +
			"- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: b}\n", [7]int{0, 1, 0, 0, 0, 0, 1}},
		{"typed list", "apiVersion: v1\nkind: ServiceList\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n" +
			"- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n", [7]int{0, 2, 0, 0, 0, 0, 0}},
		{"JSON object", `{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}}`, [7]int{0, 1, 0, 0, 0, 0, 0}},
		{"JSON stream", `{"apiVersion":"v1","kind":"Service","metadata":{"name":"a"}}
{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"default"},"spec":{"mtls":{"mode":"STRICT"}}}`,
			[7]int{1, 1, 0, 0, 0, 0, 0}},
		{"JSON array", `[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"}},{"apiVersion":"v1","kind":"Pod","metadata":{"name":"b"}}]`,
			[7]int{0, 0, 2, 0, 0, 0, 0}},
		{"unsupported Istio kind", "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f}\n", [7]int{0, 0, 0, 0, 0, 0, 1}},
		{"byte order mark", "\xef\xbb\xbf" + vs, [7]int{1, 0, 0, 0, 0, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, errs := Parse([]byte(tt.input), "in.yaml")
			if len(errs) > 0 {
				t.Fatalf("errors: %v", errs)
			}
			got := [7]int{len(objs.Configs), len(objs.Services), len(objs.Pods), len(objs.ServiceAccounts),
				len(objs.Namespaces), len(objs.EndpointSlices), objs.Skipped}
			if got != tt.want {
				t.Errorf("counts = %v, want %v", got, tt.want)
			}
			for _, s := range objs.Services {
				if s.Namespace != DefaultNamespace {
					t.Errorf("Service %s namespace %q, want %q", s.Name, s.Namespace, DefaultNamespace)
				}
			}
			for _, n := range objs.Namespaces {
				if n.Namespace != "" {
					t.Errorf("Namespace %s got namespace %q", n.Name, n.Namespace)
				}
			}
		})
	}
}

func TestParseConfigMetadataAndSpec(t *testing.T) {
	in := `apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
  labels: {team: a}
  annotations: {note: b}
  resourceVersion: "42"
  creationTimestamp: "2024-05-01T10:00:00Z"
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {connectTimeout: 2s}
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny}
spec:
  action: DENY
  rules:
  - to:
    - operation: {ports: ["8080"]}
`
	objs, errs := Parse([]byte(in), "dir/dr.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if len(objs.Configs) != 2 {
		t.Fatalf("got %d configs", len(objs.Configs))
	}
	c := objs.Configs[0]
	want := model.Config{Kind: model.KindDestinationRule, Name: "reviews", Namespace: "shop", ResourceVersion: "42",
		Source: "dir/dr.yaml", CreationTimestamp: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}
	if c.Kind != want.Kind || c.Name != want.Name || c.Namespace != want.Namespace || c.ResourceVersion != want.ResourceVersion ||
		c.Source != want.Source || !c.CreationTimestamp.Equal(want.CreationTimestamp) {
		t.Errorf("config = %+v, want %+v", c, want)
	}
	if c.Labels["team"] != "a" || c.Annotations["note"] != "b" {
		t.Errorf("labels %v annotations %v", c.Labels, c.Annotations)
	}
	dr, ok := c.Spec.(*networking.DestinationRule)
	if !ok {
		t.Fatalf("spec is %T", c.Spec)
	}
	if dr.Host != "reviews" || dr.Subsets[0].Labels["version"] != "v1" ||
		dr.TrafficPolicy.ConnectionPool.Tcp.ConnectTimeout.AsDuration() != 2*time.Second {
		t.Errorf("spec decoded wrongly: %v", dr)
	}
	ap, ok := objs.Configs[1].Spec.(*security.AuthorizationPolicy)
	if !ok || ap.Action != security.AuthorizationPolicy_DENY || ap.Rules[0].To[0].Operation.Ports[0] != "8080" {
		t.Errorf("AuthorizationPolicy decoded wrongly: %v", objs.Configs[1].Spec)
	}
	if objs.Configs[1].Namespace != DefaultNamespace {
		t.Errorf("namespace %q, want default", objs.Configs[1].Namespace)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string
		// wantParsed is how many objects still parse beside the bad one.
		wantParsed int
		// wantIn are substrings of the one error.
		wantIn []string
		// identified says whether the error names its object.
		identified bool
	}{
		{
			name: "malformed YAML between good documents",
			input: "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: [b\n" +
				"---\napiVersion: v1\nkind: Service\nmetadata: {name: c}\n",
			wantParsed: 2,
			wantIn:     []string{"bad.yaml: document 2 (line 5) Service: yaml: line 8:"},
		},
		{
			name: "unknown field in a spec",
			input: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n" +
				"  http:\n  - route:\n    - destination: {hostz: reviews}\n",
			wantIn:     []string{"bad.yaml: VirtualService default/reviews: spec.http[0].route[0].destination.hostz: unknown field"},
			identified: true,
		},
		{
			name:       "unknown top-level spec field",
			input:      "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: x}\nspec:\n  hots: r\n",
			wantIn:     []string{"DestinationRule x/r: spec.hots: unknown field"},
			identified: true,
		},
		{
			name:       "wrong value type in a spec",
			input:      "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  http:\n  - route:\n    - weight: abc\n",
			wantIn:     []string{"VirtualService default/r: spec:", "weight"},
			identified: true,
		},
		{
			name:       "unsupported version of a known kind",
			input:      "apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n",
			wantIn:     []string{"Gateway default/g", `apiVersion "networking.istio.io/v2" is not supported`, "networking.istio.io/v1"},
			identified: true,
		},
		{
			name:   "missing name",
			input:  "apiVersion: v1\nkind: Service\nmetadata: {}\n",
			wantIn: []string{"bad.yaml: document 1 (line 1) Service: metadata.name is required"},
		},
		{
			name:   "missing kind",
			input:  "apiVersion: v1\nmetadata: {name: x}\n",
			wantIn: []string{"document 1", "kind is missing"},
		},
		{
			name:   "not an object",
			input:  "- a\n- b\n",
			wantIn: []string{"document 1", "not an object"},
		},
		{
			name:       "wrong type in a Kubernetes object",
			input:      "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: eighty}]}\n",
			wantIn:     []string{"Service default/s:"},
			identified: true,
		},
		{
			name:   "broken JSON",
			input:  `{"apiVersion": "v1", "kind": "Service",`,
			wantIn: []string{"bad.yaml: document 1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, errs := Parse([]byte(tt.input), "bad.yaml")
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1: %v", len(errs), errs)
			}
			msg := errs[0].Error()
			for _, w := range tt.wantIn {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			var pe *Error
			if !errors.As(errs[0], &pe) {
				t.Fatalf("error is %T, want *parse.Error", errs[0])
			}
			if pe.Identified() != tt.identified {
				t.Errorf("Identified() = %v, want %v (%+v)", pe.Identified(), tt.identified, pe)
			}
			if objs.Len() != tt.wantParsed {
				t.Errorf("%d objects parsed, want %d", objs.Len(), tt.wantParsed)
			}
		})
	}
}

func TestSplitYAMLLines(t *testing.T) {
	in := "a: 1\n---\nb: 2\nc: 3\n--- # x\n\n---\nd: 4"
	docs := splitYAML([]byte(in))
	wantLines := []int{1, 3, 6, 8}
	if len(docs) != len(wantLines) {
		t.Fatalf("got %d documents, want %d", len(docs), len(wantLines))
	}
	for i, d := range docs {
		if d.line != wantLines[i] {
			t.Errorf("document %d starts on line %d, want %d", i+1, d.line, wantLines[i])
		}
	}
	if string(docs[3].text) != "d: 4" {
		t.Errorf("last document %q", docs[3].text)
	}
	// "----" and "---x" are content, not separators.
	if n := len(splitYAML([]byte("a: |\n  ----\n  ---x\n"))); n != 1 {
		t.Errorf("got %d documents, want 1", n)
	}
}

// Durations are read like Istio reads them (Go durations), besides the protobuf JSON form.
func TestParseDurations(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"2s", 2 * time.Second, false},
		{"500ms", 500 * time.Millisecond, false},
		{"1m30s", 90 * time.Second, false},
		{"1.5s", 1500 * time.Millisecond, false},
		{"1h", time.Hour, false},
		{"0.000000001s", time.Nanosecond, false},
		{"-250ms", -250 * time.Millisecond, false},
		{"soon", 0, true},
		{"10", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			in := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n" +
				"  http:\n  - route: [{destination: {host: r}}]\n    timeout: \"" + tt.in + "\"\n"
			objs, errs := Parse([]byte(in), "d.yaml")
			if tt.wantErr {
				if len(errs) != 1 || !strings.Contains(errs[0].Error(), "VirtualService default/r: spec:") {
					t.Fatalf("errors = %v, want one naming the object", errs)
				}
				return
			}
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			got := objs.Configs[0].Spec.(*networking.VirtualService).Http[0].Timeout.AsDuration()
			if got != tt.want {
				t.Errorf("timeout = %v, want %v", got, tt.want)
			}
		})
	}
}
