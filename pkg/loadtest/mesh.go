package loadtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// WriteMesh writes a synthetic mesh as the YAML a user would apply: services HTTP services on port 9080
// across namespaces ns0..ns9, each with podsPerService ready pods (versions v1..vN), a DestinationRule with
// one subset per version, and an 80/20 VirtualService on every tenth service. One file per namespace. It
// returns the pod IPs of namespace ns0, which simulated proxies can use to be recognised as those pods.
func WriteMesh(dir string, services, podsPerService int) ([]string, error) {
	if podsPerService < 1 {
		podsPerService = 1
	}
	files := map[string]*strings.Builder{}
	var ns0IPs []string
	for i := range services {
		ns := fmt.Sprintf("ns%d", i%10)
		b := files[ns]
		if b == nil {
			b = &strings.Builder{}
			files[ns] = b
		}
		name := fmt.Sprintf("svc%d", i)
		fmt.Fprintf(b, `apiVersion: v1
kind: Service
metadata: {name: %s, namespace: %s}
spec:
  clusterIP: 10.96.%d.%d
  selector: {app: %s}
  ports:
  - {name: http, port: 9080}
---
`, name, ns, i/250, i%250+1, name)
		var subsets []string
		for v := 1; v <= podsPerService; v++ {
			ip := podIP(i, v)
			if ns == "ns0" {
				ns0IPs = append(ns0IPs, ip)
			}
			fmt.Fprintf(b, `apiVersion: v1
kind: Pod
metadata:
  name: %s-v%d
  namespace: %s
  labels: {app: %s, version: v%d}
spec:
  containers: [{name: app, image: app}]
status:
  phase: Running
  podIP: %s
  conditions: [{type: Ready, status: "True"}]
---
`, name, v, ns, name, v, ip)
			subsets = append(subsets, fmt.Sprintf("  - {name: v%d, labels: {version: v%d}}", v, v))
		}
		fmt.Fprintf(b, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: %s, namespace: %s}
spec:
  host: %s
  subsets:
%s
---
`, name, ns, name, strings.Join(subsets, "\n"))
		if i%10 == 0 && podsPerService >= 2 {
			fmt.Fprintf(b, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %s, namespace: %s}
spec:
  hosts: [%s]
  http:
  - route:
    - {destination: {host: %s, subset: v1}, weight: 80}
    - {destination: {host: %s, subset: v2}, weight: 20}
---
`, name, ns, name, name, name)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for ns, b := range files {
		if err := os.WriteFile(filepath.Join(dir, ns+".yaml"), []byte(b.String()), 0o644); err != nil {
			return nil, err
		}
	}
	return ns0IPs, nil
}

// podIP is the address of pod version v of service i in a generated mesh.
func podIP(i, v int) string { return fmt.Sprintf("10.%d.%d.%d", 100+v, i/250, i%250+1) }

// MeshPodIPs returns the pod IPs of namespace ns0 in the mesh WriteMesh(dir, services, podsPerService) writes.
func MeshPodIPs(services, podsPerService int) []string {
	var out []string
	for i := 0; i < services; i += 10 {
		for v := 1; v <= max(podsPerService, 1); v++ {
			out = append(out, podIP(i, v))
		}
	}
	return out
}
