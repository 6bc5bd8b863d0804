package agent_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/test/meshdtest"
)

var shareLine = regexp.MustCompile(`^(?:(v\d) +(\d+)%  )?(?:(v\d) +(\d+)%  )?\((\d+) calls`)

// shares parses a grpc-echo client line ("v1  80%  v2  20%  (100 calls)") into per-version percentages; ok
// is false for lines with failures or too few calls to judge.
func shares(line string) (map[string]int, bool) {
	m := shareLine.FindStringSubmatch(line)
	if m == nil || strings.Contains(line, "failed") {
		return nil, false
	}
	if n, _ := strconv.Atoi(m[5]); n < 50 {
		return nil, false
	}
	out := map[string]int{}
	for _, i := range []int{1, 3} {
		if m[i] != "" {
			out[m[i]], _ = strconv.Atoi(m[i+1])
		}
	}
	return out, true
}

// proxylessPod runs an agent in proxyless mode for pod name at ip and returns its process, its status port and
// the path of the gRPC bootstrap it writes.
func proxylessPod(t *testing.T, discovery, name, ip string, extra ...string) (*process, int, int, string) {
	t.Helper()
	dir := podDir(t)
	status, debug := freePort(t), freePort(t)
	pc := fmt.Sprintf(`{"discoveryAddress": %q, "statusPort": %d}`, discovery, status)
	agent := startProcess(t, "agent "+name, procOptions{dir: dir, env: agentEnv(name, ip, pc, append([]string{
		"ISTIO_META_GENERATOR=grpc", "PILOT_CERT_PROVIDER=none", "PROXY_XDS_DEBUG_VIA_AGENT_PORT=" + itoa(debug)}, extra...)...)},
		"agent", "proxy", "sidecar")
	bootstrap := filepath.Join(dir, "etc/istio/proxy/grpc-bootstrap.json")
	testutil.Eventually(t, 20*time.Second, name+"'s agent writes the gRPC bootstrap", func() bool {
		_, err := os.Stat(bootstrap)
		return err == nil && !agent.exited()
	})
	return agent, status, debug, bootstrap
}

// TestProxylessDemo is `make demo` as a test, on the shipped sample: meshd in file mode on samples/grpc-echo,
// two grpc-go xDS echo servers (v1, v2) and an xDS client, each beside its own agent binary in proxyless mode.
// The agents' XDS proxies carry the workloads' ADS streams; the client's shares follow the VirtualService
// weights, and an edit of the weights; readiness flips once the workload has its listener; port 15004 answers
// with the control plane's view; SIGTERM stops an agent cleanly.
func TestProxylessDemo(t *testing.T) {
	config := copyDir(t, "../../samples/grpc-echo")
	s := meshdtest.Start(t, config, meshdtest.Options{})
	discovery := s.GRPCListener.String()

	var agents []*process
	for _, v := range []struct{ name, ip string }{{"echo-v1", "127.0.0.2"}, {"echo-v2", "127.0.0.3"}} {
		agent, status, _, bootstrap := proxylessPod(t, discovery, v.name, v.ip)
		agents = append(agents, agent)
		readyURL := fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", status)
		if code := httpStatus(readyURL); code != 503 {
			t.Fatalf("%s: /healthz/ready = %d before the server asked for its listener, want 503", v.name, code)
		}
		startProcess(t, v.name, procOptions{env: []string{"GRPC_XDS_BOOTSTRAP=" + bootstrap}},
			"grpc-echo", "server", "--addr", v.ip+":17070", "--version", strings.TrimPrefix(v.name, "echo-"))
		testutil.Eventually(t, 20*time.Second, v.name+" ready once its listener arrived", func() bool { return httpStatus(readyURL) == 200 })
	}
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", freeUDPPort(t))
	clientAgent, status, debugPort, bootstrap := proxylessPod(t, discovery, "client", "127.0.0.4",
		"ISTIO_META_DNS_CAPTURE=true", "DNS_PROXY_ADDR="+dnsAddr)
	client := startProcess(t, "client", procOptions{env: []string{"GRPC_XDS_BOOTSTRAP=" + bootstrap}, lines: true},
		"grpc-echo", "client", "--interval", "500ms", "--calls", "100")

	waitShares := func(what string, ok func(map[string]int) bool) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case line := <-client.lines:
				if sh, valid := shares(line); valid && ok(sh) {
					return
				}
			case <-deadline:
				t.Fatalf("client never showed %s", what)
			}
		}
	}
	// 80/20 within sampling error (100 calls a line).
	waitShares("about 80% v1 / 20% v2", func(sh map[string]int) bool { return sh["v1"] >= 65 && sh["v1"] <= 92 && sh["v2"] >= 8 })

	replaceInFile(t, filepath.Join(config, "routes.yaml"), "weight: 80", "weight: 0")
	replaceInFile(t, filepath.Join(config, "routes.yaml"), "weight: 20", "weight: 100")
	waitShares("all replies from v2 after the weight edit", func(sh map[string]int) bool { return sh["v2"] == 100 })

	// Port 15004: the control plane's sync status of this pod, over the agent's own xDS connection.
	code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/debug/syncz", debugPort))
	if err != nil || code != 200 || !strings.Contains(body, `"proxy": "client.default"`) || !strings.Contains(body, `"lds": "SYNCED"`) {
		t.Fatalf("15004 /debug/syncz = %d %v:\n%s", code, err, body)
	}

	// The DNS proxy answers mesh names from the control plane's name table, short forms included; the
	// status port shows the table.
	for _, name := range []string{"echo.default.svc.cluster.local.", "echo."} {
		testutil.Eventually(t, 10*time.Second, "DNS answer 10.96.70.70 for "+name, func() bool {
			return lookupA(dnsAddr, name) == "10.96.70.70"
		})
	}
	if _, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/debug/ndsz", status)); err != nil || !strings.Contains(body, "echo.default.svc.cluster.local") {
		t.Fatalf("/debug/ndsz: %v\n%s", err, body)
	}

	if code := clientAgent.signal(syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Fatalf("proxyless agent exited %d on SIGTERM, want 0", code)
	}
	for _, a := range agents {
		if a.exited() {
			t.Fatalf("%s exited early:\n%s", a.name, a.output())
		}
	}
}

// lookupA asks the DNS server at addr for name's A record over UDP; "" when there is no answer.
func lookupA(addr, name string) string {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, addr)
	if err != nil || r.Rcode != dns.RcodeSuccess {
		return ""
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}
