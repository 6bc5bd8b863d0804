package validation

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/config/parse"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/test/corpus"
)

// Every Istio object of Istio's published samples is valid: validation must not reject real-world config.
// (No exceptions were needed; list any here with the reason if that changes.)
func TestCorpusValidates(t *testing.T) {
	n := 0
	err := filepath.WalkDir(corpus.Dir(t), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		objs, errs := parse.Parse(data, path)
		for _, e := range errs {
			t.Errorf("parse: %v", e)
		}
		for _, c := range objs.Configs {
			n++
			if err := Validate(c); err != nil {
				t.Errorf("%v", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 40 {
		t.Fatalf("validated only %d corpus objects", n)
	}
}

// config parses one object written as YAML.
func config(t *testing.T, apiVersion, kind, spec string) *model.Config {
	t.Helper()
	in := "apiVersion: " + apiVersion + "\nkind: " + kind + "\nmetadata:\n  name: obj\nspec:\n" + indent(spec)
	objs, errs := parse.Parse([]byte(in), "test.yaml")
	if len(errs) > 0 || len(objs.Configs) != 1 {
		t.Fatalf("parse %s: %v", kind, errs)
	}
	return objs.Configs[0]
}

func indent(s string) string {
	lines := strings.Split(strings.Trim(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return strings.Join(lines, "\n") + "\n"
}

type testCase struct {
	name string
	spec string
	// want lists substrings of the error ("path: message"); empty means valid.
	want []string
}

func run(t *testing.T, apiVersion, kind string, tests []testCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(config(t, apiVersion, kind, tt.spec))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\n does not contain %q", err, w)
				}
			}
		})
	}
}

func TestVirtualService(t *testing.T) {
	run(t, "networking.istio.io/v1", "VirtualService", []testCase{
		{"valid split with header match", `
hosts: [reviews]
http:
- match: [{headers: {end-user: {exact: jason}}, uri: {regex: "/api/v[0-9]+"}}]
  route: [{destination: {host: reviews, subset: v2}}]
  timeout: 2s
  retries: {attempts: 3, perTryTimeout: 500ms}
- route:
  - {destination: {host: reviews, subset: v1}, weight: 80}
  - {destination: {host: reviews, subset: v2, port: {number: 9080}}, weight: 20}`, nil},
		{"no hosts", `http: [{route: [{destination: {host: a}}]}]`, []string{"hosts: at least one host is required"}},
		{"empty host", `
hosts: [""]
http: [{route: [{destination: {host: a}}]}]`, []string{"hosts[0]: host must not be empty"}},
		{"star host for mesh", `
hosts: ["*"]
http: [{route: [{destination: {host: a}}]}]`, []string{`hosts[0]: host "*" is only allowed for VirtualServices bound to gateways`}},
		{"star host for a gateway", `
hosts: ["*"]
gateways: [bookinfo-gateway]
http: [{route: [{destination: {host: a}}]}]`, nil},
		{"bad wildcard", `
hosts: ["re*views"]
http: [{route: [{destination: {host: a}}]}]`, []string{"hosts[0]:", "wildcard"}},
		{"no routes at all", `hosts: [a]`, []string{"at least one of http, tcp or tls routes is required"}},
		{"http route without action", `
hosts: [a]
http: [{timeout: 1s}]`, []string{"http[0]: needs one of route, redirect, directResponse or delegate"}},
		{"route and redirect", `
hosts: [a]
http: [{route: [{destination: {host: a}}], redirect: {uri: /x}}]`, []string{"http[0]: route, redirect, directResponse and delegate are mutually exclusive"}},
		{"destination without host", `
hosts: [a]
http: [{route: [{destination: {subset: v1}}]}]`, []string{"http[0].route[0].destination.host: is required"}},
		{"negative weight and zero sum", `
hosts: [a]
http:
- route:
  - {destination: {host: a}, weight: 0}
  - {destination: {host: b}, weight: -5}`, []string{"http[0].route[1]: weight must be >= 0", "http[0].route: weights of a split route must add up to more than 0"}},
		{"subset not a DNS label", `
hosts: [a]
http: [{route: [{destination: {host: a, subset: V_1}}]}]`, []string{"http[0].route[0].destination.subset:", "RFC 1123"}},
		{"port out of range", `
hosts: [a]
http: [{route: [{destination: {host: a, port: {number: 70000}}}]}]`, []string{"http[0].route[0].destination.port.number: port number 70000 must be in 1..65535"}},
		{"regex does not compile", `
hosts: [a]
http: [{match: [{uri: {regex: "(unclosed"}}], route: [{destination: {host: a}}]}]`, []string{"http[0].match[0].uri.regex:", "does not compile"}},
		{"lookahead is not RE2", `
hosts: [a]
http: [{match: [{headers: {x-user: {regex: "(?!admin).*"}}}], route: [{destination: {host: a}}]}]`, []string{"http[0].match[0].headers[x-user].regex"}},
		{"empty uri match", `
hosts: [a]
http: [{match: [{uri: {}}], route: [{destination: {host: a}}]}]`, []string{"http[0].match[0].uri: must set one of exact, prefix or regex"}},
		{"header presence match is fine", `
hosts: [a]
http: [{match: [{headers: {x-canary: {}}}], route: [{destination: {host: a}}]}]`, nil},
		{"upper-case header name", `
hosts: [a]
http: [{match: [{headers: {End-User: {exact: j}}}], route: [{destination: {host: a}}]}]`, []string{"headers[End-User]: header names must be lowercase"}},
		{"zero timeout", `
hosts: [a]
http: [{route: [{destination: {host: a}}], timeout: 0s}]`, []string{"http[0].timeout: duration 0s must be at least 1ms"}},
		{"negative retries and per-try timeout", `
hosts: [a]
http: [{route: [{destination: {host: a}}], retries: {attempts: -1, perTryTimeout: 0s}}]`, []string{"http[0].retries.attempts: must be >= 0", "http[0].retries.perTryTimeout"}},
		{"bad redirect code and direct response status", `
hosts: [a]
http:
- redirect: {uri: /x, redirectCode: 200}
- directResponse: {status: 99}`, []string{"http[0].redirect.redirectCode", "http[1].directResponse.status"}},
		{"fault percentage", `
hosts: [a]
http: [{route: [{destination: {host: a}}], fault: {abort: {httpStatus: 503, percentage: {value: 150}}}}]`, []string{"http[0].fault.abort.percentage.value: percentage 150 must be in 0..100"}},
		{"tcp route without host", `
hosts: [a]
tcp: [{route: [{destination: {port: {number: 9000}}}]}]`, []string{"tcp[0].route[0].destination.host: is required"}},
		{"tcp route without destinations", `
hosts: [a]
tcp: [{match: [{port: 9000}]}]`, []string{"tcp[0].route: at least one destination is required"}},
		{"tls route without sni", `
hosts: [a]
tls: [{match: [{port: 443}], route: [{destination: {host: a}}]}]`, []string{"tls[0].match[0].sniHosts: at least one SNI host is required"}},
		{"bad exportTo", `
hosts: [a]
exportTo: ["Not_A_Namespace"]
http: [{route: [{destination: {host: a}}]}]`, []string{"exportTo[0]:"}},
	})
}

func TestDestinationRule(t *testing.T) {
	run(t, "networking.istio.io/v1", "DestinationRule", []testCase{
		{"valid", `
host: reviews
trafficPolicy:
  loadBalancer: {simple: LEAST_REQUEST}
  connectionPool: {tcp: {maxConnections: 100, connectTimeout: 1s}, http: {http2MaxRequests: 10}}
  outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  portLevelSettings: [{port: {number: 9080}, tls: {mode: ISTIO_MUTUAL}}]
subsets:
- {name: v1, labels: {version: v1}}
- {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}`, nil},
		{"no host", `subsets: [{name: v1, labels: {version: v1}}]`, []string{"host: is required"}},
		{"duplicate subsets", `
host: reviews
subsets:
- {name: v1, labels: {version: v1}}
- {name: v1, labels: {version: v2}}`, []string{`subsets[1].name: subset "v1" is already defined by subsets[0]`}},
		{"empty subset name and no labels", `
host: reviews
subsets: [{name: ""}]`, []string{"subsets[0].name: is required", `subsets[0].labels: subset "" has no labels`}},
		{"negative pool values", `
host: r
trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}, http: {http1MaxPendingRequests: -2}}}`,
			[]string{"trafficPolicy.connectionPool.tcp.maxConnections: must be >= 0", "trafficPolicy.connectionPool.http.http1MaxPendingRequests: must be >= 0"}},
		{"outlier detection", `
host: r
trafficPolicy: {outlierDetection: {interval: 0s, baseEjectionTime: 0.0001s, maxEjectionPercent: 101}}`,
			[]string{"outlierDetection.interval", "outlierDetection.baseEjectionTime", "outlierDetection.maxEjectionPercent: 101 must be in 0..100"}},
		{"port level settings without port", `
host: r
trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}`, []string{"trafficPolicy.portLevelSettings[0].port: port-level settings need a port number"}},
		{"subset policy checked too", `
host: r
subsets: [{name: v1, labels: {v: "1"}, trafficPolicy: {connectionPool: {tcp: {maxConnections: -3}}}}]`, []string{"subsets[0].trafficPolicy.connectionPool.tcp.maxConnections"}},
		{"mutual tls without certificates", `
host: r
trafficPolicy: {tls: {mode: MUTUAL}}`, []string{"trafficPolicy.tls: mode MUTUAL needs credentialName"}},
		{"locality distribution not 100", `
host: r
trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: "us/*", to: {"us/a/*": 50, "us/b/*": 40}}]}}}`, []string{"distribute[0].to: weights must add up to 100, got 90"}},
	})
}

func TestGateway(t *testing.T) {
	run(t, "networking.istio.io/v1", "Gateway", []testCase{
		{"valid http and https", `
selector: {istio: ingressgateway}
servers:
- {port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"], tls: {httpsRedirect: true}}
- {port: {number: 443, name: https, protocol: HTTPS}, hosts: ["bookinfo/*.example.com"], tls: {mode: SIMPLE, credentialName: cert}}
- {port: {number: 15443, name: tls, protocol: TLS}, hosts: ["*.local"], tls: {mode: AUTO_PASSTHROUGH}}`, nil},
		{"no servers", `selector: {istio: ingressgateway}`, []string{"servers: at least one server is required"}},
		{"server without port and hosts", `servers: [{hosts: []}]`, []string{"servers[0].port: is required", "servers[0].hosts: at least one host is required"}},
		{"bad protocol and port", `servers: [{port: {number: 0, protocol: FTP}, hosts: ["*"]}]`, []string{"servers[0].port.number", `servers[0].port.protocol: unknown protocol "FTP"`}},
		{"https without tls", `servers: [{port: {number: 443, protocol: HTTPS}, hosts: ["*"]}]`, []string{"servers[0].tls: servers with protocol HTTPS need tls settings"}},
		{"simple without certificate", `servers: [{port: {number: 443, protocol: HTTPS}, hosts: ["*"], tls: {mode: SIMPLE}}]`, []string{"servers[0].tls: mode SIMPLE needs credentialName"}},
		{"tls mode on plain http", `servers: [{port: {number: 80, protocol: HTTP}, hosts: ["*"], tls: {mode: SIMPLE, credentialName: c}}]`, []string{"servers[0].tls: TLS settings other than httpsRedirect only apply to HTTPS and TLS servers"}},
		{"istio mutual with certificates", `servers: [{port: {number: 443, protocol: HTTPS}, hosts: ["*"], tls: {mode: ISTIO_MUTUAL, credentialName: c}}]`, []string{"servers[0].tls: mode ISTIO_MUTUAL uses no certificates"}},
		{"auto passthrough on https", `servers: [{port: {number: 443, protocol: HTTPS}, hosts: ["*"], tls: {mode: AUTO_PASSTHROUGH}}]`, []string{"servers[0].tls.mode: AUTO_PASSTHROUGH needs protocol TLS"}},
		{"mutual without CA", `servers: [{port: {number: 443, protocol: HTTPS}, hosts: ["*"], tls: {mode: MUTUAL, serverCertificate: /c, privateKey: /k}}]`, []string{"servers[0].tls.caCertificates"}},
		{"bad host namespace", `servers: [{port: {number: 80, protocol: HTTP}, hosts: ["Bad_NS/foo.com"]}]`, []string{"servers[0].hosts[0]:", "namespace"}},
	})
}

func TestServiceEntry(t *testing.T) {
	run(t, "networking.istio.io/v1", "ServiceEntry", []testCase{
		{"valid dns", `
hosts: [api.example.com]
ports: [{number: 443, name: https, protocol: HTTPS}]
resolution: DNS
location: MESH_EXTERNAL`, nil},
		{"valid static with endpoints", `
hosts: [db.internal]
addresses: [10.0.0.0/24]
ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
resolution: STATIC
endpoints: [{address: 10.0.0.5, ports: {tcp-pg: 6432}}, {address: "unix:///var/run/pg.sock"}]`, nil},
		{"valid dns endpoints are hostnames", `
hosts: [db.internal]
ports: [{number: 5432, name: tcp}]
resolution: DNS
endpoints: [{address: db1.example.com}]`, nil},
		{"no hosts", `ports: [{number: 80, name: http}]`, []string{"hosts: at least one host is required"}},
		{"star host", `
hosts: ["*"]
ports: [{number: 80, name: http}]`, []string{`hosts[0]: host "*" is not allowed in a ServiceEntry`}},
		{"ports: duplicate numbers, missing name", `
hosts: [a.com]
ports: [{number: 80, name: http}, {number: 80}]`, []string{"ports[1].number: port 80 is already defined by ports[0]", "ports[1].name: is required"}},
		{"static without endpoints", `
hosts: [a.com]
ports: [{number: 80, name: http}]
resolution: STATIC`, []string{"endpoints: resolution STATIC needs endpoints or a workloadSelector"}},
		{"static endpoint is a hostname", `
hosts: [a.com]
ports: [{number: 80, name: http}]
resolution: STATIC
endpoints: [{address: foo.com}]`, []string{"endpoints[0].address:", "is not an IP address"}},
		{"bad address", `
hosts: [a.com]
addresses: [not-an-ip]
ports: [{number: 80, name: http}]`, []string{`addresses[0]: "not-an-ip" is not an IP address or CIDR`}},
		{"endpoint port not a service port", `
hosts: [a.com]
ports: [{number: 80, name: http}]
resolution: STATIC
endpoints: [{address: 1.2.3.4, ports: {grpc: 90}}]`, []string{`endpoints[0].ports[grpc]: port "grpc" is not a port name`}},
		{"dns wildcard without endpoints", `
hosts: ["*.example.com"]
ports: [{number: 80, name: http}]
resolution: DNS`, []string{"hosts: resolution DNS without endpoints"}},
		{"none with endpoints", `
hosts: [a.com]
ports: [{number: 80, name: http}]
resolution: NONE
endpoints: [{address: 1.2.3.4}]`, []string{"endpoints: resolution NONE"}},
	})
}

func TestWorkloadEntrySidecarAndSecurity(t *testing.T) {
	run(t, "networking.istio.io/v1", "WorkloadEntry", []testCase{
		{"valid", `{address: 10.1.1.1, labels: {app: vm}, serviceAccount: vm-sa, ports: {http: 8080}}`, nil},
		{"no address", `{labels: {app: vm}}`, []string{"address: is required"}},
		{"bad port", `{address: 10.1.1.1, ports: {http: 0}}`, []string{"ports[http]: port number 0"}},
	})
	run(t, "networking.istio.io/v1", "Sidecar", []testCase{
		{"valid", `
egress:
- hosts: ["./*", "istio-system/*", "*/api.example.com"]
ingress:
- {port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: "127.0.0.1:8080"}`, nil},
		{"host without namespace", `egress: [{hosts: ["reviews.default.svc.cluster.local"]}]`, []string{"egress[0].hosts[0]:", "namespace/host"}},
		{"empty", `{}`, []string{"empty Sidecar"}},
		{"two catch-all listeners", `egress: [{hosts: ["./*"]}, {hosts: ["*/*"]}]`, []string{"egress[1]: only one egress listener may omit the port"}},
		{"bad default endpoint", `ingress: [{port: {number: 80, protocol: HTTP}, defaultEndpoint: "10.0.0.1:80"}]`, []string{"ingress[0].defaultEndpoint"}},
	})
	run(t, "security.istio.io/v1", "PeerAuthentication", []testCase{
		{"valid", `{selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}, portLevelMtls: {"8080": {mode: PERMISSIVE}}}`, nil},
		{"port level without selector", `{portLevelMtls: {"8080": {mode: DISABLE}}}`, []string{"portLevelMtls: needs a selector"}},
		{"wildcard label", `{selector: {matchLabels: {app: "*"}}}`, []string{"selector.matchLabels[app]: wildcards are not allowed"}},
	})
	run(t, "security.istio.io/v1", "AuthorizationPolicy", []testCase{
		{"valid", `
selector: {matchLabels: {app: a}}
action: ALLOW
rules:
- from: [{source: {principals: ["cluster.local/ns/default/sa/x"], ipBlocks: ["10.0.0.0/8"]}}]
  to: [{operation: {methods: [GET], ports: ["9080"]}}]
  when: [{key: "request.headers[x]", values: ["y"]}]`, nil},
		{"bad port and missing operation", `
rules:
- to: [{operation: {ports: ["http"]}}, {}]`, []string{`rules[0].to[0].operation.ports[0]: "http" is not a port number`, "rules[0].to[1].operation: is required"}},
		{"custom without provider", `{action: CUSTOM, rules: [{}]}`, []string{"provider.name: action CUSTOM needs a provider"}},
		{"condition without values", `{rules: [{when: [{key: source.ip}]}]}`, []string{"rules[0].when[0]: needs values or notValues"}},
		{"bad ip block", `{rules: [{from: [{source: {ipBlocks: ["300.1.1.1"]}}]}]}`, []string{"rules[0].from[0].source.ipBlocks[0]"}},
	})
}

// The message names the source, the object, and each problem with its path; the problems unwrap one by one.
func TestErrorShape(t *testing.T) {
	c := &model.Config{Kind: model.KindVirtualService, Name: "reviews", Namespace: "default", Source: "samples/x.yaml",
		Spec: &networking.VirtualService{
			Hosts: []string{"reviews"},
			Http: []*networking.HTTPRoute{{Route: []*networking.HTTPRouteDestination{
				{Destination: &networking.Destination{Host: "reviews", Subset: "v1"}, Weight: 10},
				{Destination: &networking.Destination{Host: "reviews", Subset: "v2"}, Weight: -1},
			}}},
		}}
	err := Validate(c)
	want := "samples/x.yaml: VirtualService default/reviews: http[0].route[1]: weight must be >= 0, got -1"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v\nwant    %s", err, want)
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Path != "http[0].route[1]" {
		t.Errorf("errors.As FieldError = %+v", fe)
	}
	// A spec of the wrong type is reported, not a panic.
	bad := &model.Config{Kind: model.KindGateway, Name: "g", Namespace: "default", Spec: &networking.Sidecar{}}
	if err := Validate(bad); err == nil || !strings.Contains(err.Error(), "not a Gateway spec") {
		t.Errorf("wrong spec type: %v", err)
	}
}
