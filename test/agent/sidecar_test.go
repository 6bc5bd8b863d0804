package agent_test

import (
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/test/meshdtest"
)

// sidecarPod starts the agent for Bookinfo's productpage as a sidecar, with the proxy double as its Envoy.
// extra environment settings come last, so they win.
func sidecarPod(t *testing.T, name, discovery string, extra ...string) (agent *process, status, admin int) {
	t.Helper()
	status, admin = freePort(t), freePort(t)
	pc := fmt.Sprintf(`{"discoveryAddress": %q, "statusPort": %d, "proxyAdminPort": %d, "binaryPath": %q}`,
		discovery, status, admin, bins+"/proxydouble")
	env := agentEnv("productpage-v1", "10.244.0.10", pc, append([]string{
		"SERVICE_ACCOUNT=bookinfo-productpage", "PILOT_CERT_PROVIDER=none", "PROXY_XDS_DEBUG_VIA_AGENT=false",
		"TERMINATION_DRAIN_DURATION_SECONDS=2"}, extra...)...)
	agent = startProcess(t, name, procOptions{dir: podDir(t), env: env}, "agent", "proxy", "sidecar",
		"--domain", "default.svc.cluster.local", "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error",
		"--log_output_level=default:info", "--concurrency", "2")
	return agent, status, admin
}

// TestSidecarAgentSupervisesProxy runs the agent binary with the container args of a real pod and the proxy
// double as Envoy: the proxy's ADS stream goes through the agent's XDS socket; the pod is not ready while the
// control plane is unreachable and becomes ready once config arrived; the status port merges the proxy's and
// the agent's metrics; SIGTERM drains the proxy's listeners for the termination drain duration, then stops
// it, and the agent exits 0.
func TestSidecarAgentSupervisesProxy(t *testing.T) {
	port := freePort(t)
	discovery := fmt.Sprintf("127.0.0.1:%d", port)
	agent, status, admin := sidecarPod(t, "agent", discovery)
	readyURL := fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", status)

	// The proxy runs (its admin answers) but has no config: the control plane is not up yet.
	testutil.Eventually(t, 20*time.Second, "the proxy double's admin answers", func() bool {
		return httpStatus(fmt.Sprintf("http://127.0.0.1:%d/ready", admin)) != 0
	})
	for range 3 {
		if code := httpStatus(readyURL); code != http.StatusServiceUnavailable {
			t.Fatalf("/healthz/ready = %d without a control plane, want 503", code)
		}
	}

	meshdtest.Start(t, copyDir(t, "../../samples/bookinfo"), meshdtest.Options{GRPCAddr: discovery})
	testutil.Eventually(t, 30*time.Second, "ready once the proxy has its listeners and clusters", func() bool {
		return httpStatus(readyURL) == http.StatusOK
	})

	code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/stats/prometheus", status))
	if err != nil || code != 200 {
		t.Fatalf("/stats/prometheus: %d %v", code, err)
	}
	for _, want := range []string{"envoy_", `istio_agent_xds_proxy_acks{type="cds"}`, `istio_agent_xds_proxy_acks{type="lds"}`, "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("merged metrics lack %s:\n%.2000s", want, body)
		}
	}

	_ = agent.cmd.Process.Signal(syscall.SIGTERM)
	testutil.Eventually(t, 10*time.Second, "the proxy's listeners draining after SIGTERM", func() bool {
		_, stats, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/stats", admin))
		return err == nil && strings.Contains(stats, "listener_manager.total_listeners_draining: 1")
	})
	if code := agent.wait(20 * time.Second); code != 0 {
		t.Fatalf("agent exited %d after SIGTERM, want 0", code)
	}
	if httpStatus(fmt.Sprintf("http://127.0.0.1:%d/ready", admin)) != 0 {
		t.Fatal("the proxy still answers after the agent exited")
	}
}

// TestAgentExitsWithTheProxy: when the proxy exits on its own, the agent exits with its status; and
// /quitquitquit on the status port stops proxy and agent cleanly.
func TestAgentExitsWithTheProxy(t *testing.T) {
	s := meshdtest.Start(t, copyDir(t, "../../samples/bookinfo"), meshdtest.Options{})
	discovery := s.GRPCListener.String()

	crashing, _, _ := sidecarPod(t, "crashing agent", discovery, "PROXYDOUBLE_EXIT_CODE=3", "PROXYDOUBLE_EXIT_AFTER=500ms")
	if code := crashing.wait(20 * time.Second); code != 3 {
		t.Fatalf("agent exited %d when its proxy exited 3", code)
	}

	agent, status, _ := sidecarPod(t, "agent", discovery)
	quit := fmt.Sprintf("http://127.0.0.1:%d/quitquitquit", status)
	testutil.Eventually(t, 20*time.Second, "the status port answers", func() bool { return httpStatus(quit) == http.StatusMethodNotAllowed })
	resp, err := http.Post(quit, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /quitquitquit = %d", resp.StatusCode)
	}
	if code := agent.wait(20 * time.Second); code != 0 {
		t.Fatalf("agent exited %d after /quitquitquit, want 0", code)
	}
}

// TestProxyDiesWithTheAgent: an agent killed outright (no drain, no cleanup) does not leave its proxy running
// unsupervised.
func TestProxyDiesWithTheAgent(t *testing.T) {
	s := meshdtest.Start(t, copyDir(t, "../../samples/bookinfo"), meshdtest.Options{})
	agent, _, admin := sidecarPod(t, "agent", s.GRPCListener.String())
	adminReady := fmt.Sprintf("http://127.0.0.1:%d/ready", admin)
	t.Cleanup(func() {
		// If the proxy outlived its agent, stop it here rather than leave it holding ports.
		if resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/quitquitquit", admin), "", nil); err == nil {
			resp.Body.Close()
		}
	})
	testutil.Eventually(t, 20*time.Second, "the proxy double's admin answers", func() bool { return httpStatus(adminReady) != 0 })
	if code := agent.signal(syscall.SIGKILL, 10*time.Second); code != -1 {
		t.Fatalf("agent exit code %d after SIGKILL, want -1 (killed)", code)
	}
	testutil.Eventually(t, 10*time.Second, "the proxy gone after its agent was killed", func() bool { return httpStatus(adminReady) == 0 })
}
