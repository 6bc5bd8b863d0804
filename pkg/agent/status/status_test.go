package status

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/test/proxydouble/doubletest"
)

var double string

func TestMain(m *testing.M) { os.Exit(doubletest.Main(m, &double)) }

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// start runs a status server on loopback and returns its base URL; Serve must end cleanly at cleanup.
func start(t *testing.T, opts Options) string {
	t.Helper()
	opts.Addr = "127.0.0.1:0"
	if opts.Logger == nil {
		opts.Logger = quiet()
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve = %v", err)
		}
	})
	return "http://" + s.Addr().String()
}

func do(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("User-Agent", "kube-probe/1.34")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	return do(t, http.MethodGet, url)
}

// TestReadiness: /healthz/ready is 503 with the reason until the agent is ready and Envoy's admin says LIVE.
func TestReadiness(t *testing.T) {
	var agentReady, envoyLive atomic.Bool
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ready" {
			http.NotFound(w, r)
			return
		}
		if envoyLive.Load() {
			fmt.Fprintln(w, "LIVE")
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "PRE_INITIALIZING")
	}))
	defer admin.Close()
	base := start(t, Options{
		AdminAddr: admin.Listener.Addr().String(),
		Ready: func() error {
			if !agentReady.Load() {
				return errors.New("waiting for first CDS and LDS")
			}
			return nil
		},
	})

	if code, body := get(t, base+"/healthz/ready"); code != 503 || !strings.Contains(body, "waiting for first CDS and LDS") {
		t.Fatalf("agent not ready: %d %q", code, body)
	}
	agentReady.Store(true)
	if code, body := get(t, base+"/healthz/ready"); code != 503 || !strings.Contains(body, "PRE_INITIALIZING") {
		t.Fatalf("envoy initializing: %d %q", code, body)
	}
	envoyLive.Store(true)
	if code, body := get(t, base+"/healthz/ready"); code != 200 {
		t.Fatalf("both ready: %d %q", code, body)
	}
	agentReady.Store(false)
	if code, _ := get(t, base+"/healthz/ready"); code != 503 {
		t.Fatalf("agent lost readiness: %d", code)
	}
	agentReady.Store(true)
	admin.Close()
	if code, body := get(t, base+"/healthz/ready"); code != 503 || !strings.Contains(body, "proxy not ready") {
		t.Fatalf("envoy gone: %d %q", code, body)
	}
}

// TestReadinessProxyless: without a proxy only the agent's readiness counts.
func TestReadinessProxyless(t *testing.T) {
	base := start(t, Options{})
	if code, body := get(t, base+"/healthz/ready"); code != 200 {
		t.Fatalf("/healthz/ready = %d %q", code, body)
	}
}

// TestWithProxyDouble: the status server reads the double's admin /ready (503 before any xDS) and its
// Prometheus listener, as it would Envoy's.
func TestWithProxyDouble(t *testing.T) {
	dir, err := os.MkdirTemp("", "st")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	b, err := doubletest.Write(doubletest.Options{Dir: dir, XDSSocket: filepath.Join(dir, "XDS")})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(double, b.Args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})

	base := start(t, Options{AdminAddr: b.AdminAddr, PrometheusAddr: b.PrometheusAddr})
	testutil.Eventually(t, 10*time.Second, "the double's metrics in the scrape", func() bool {
		_, body := get(t, base+"/stats/prometheus")
		return strings.Contains(body, "envoy_server_state 2")
	})
	if code, body := get(t, base+"/healthz/ready"); code != 503 || !strings.Contains(body, "PRE_INITIALIZING") {
		t.Fatalf("/healthz/ready = %d %q, want 503 PRE_INITIALIZING", code, body)
	}
}

func parseMetrics(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("merged scrape is not valid Prometheus text: %v\n%s", err, body)
	}
	return fams
}

func value(f *dto.MetricFamily, labels ...string) float64 {
	for _, m := range f.GetMetric() {
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			match = match && found
		}
		if match {
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// appMetricsServer serves reg on 127.0.0.1 at /metrics and returns its ISTIO_PROMETHEUS_ANNOTATIONS.
func appMetricsServer(t *testing.T, h http.Handler) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return fmt.Sprintf(`{"scrape":"true","path":"/metrics","port":"%s"}`, port)
}

// TestMergedMetrics: Envoy's, the agent's and the app's metrics come out as one valid exposition; a family both
// the agent and the app export appears once, with the agent's value.
func TestMergedMetrics(t *testing.T) {
	envoy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stats/prometheus" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, "# TYPE envoy_cluster_upstream_rq_total counter\n"+
			"envoy_cluster_upstream_rq_total{cluster_name=\"xds-grpc\"} 7\n"+
			"# TYPE envoy_server_live gauge\nenvoy_server_live 1\n")
	}))
	defer envoy.Close()

	agentReg := prometheus.NewRegistry()
	agentReg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "istio_agent_xds_pushes_total"}, func() float64 { return 3 }))
	agentReg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shared_gauge"}, func() float64 { return 1 }))
	appReg := prometheus.NewRegistry()
	appReg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "app_requests_total"}, func() float64 { return 42 }))
	appReg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shared_gauge"}, func() float64 { return 2 }))

	base := start(t, Options{
		PrometheusAddr: envoy.Listener.Addr().String(),
		AgentMetrics:   agentReg,
		AppMetrics:     appMetricsServer(t, promhttp.HandlerFor(appReg, promhttp.HandlerOpts{})),
	})
	code, body := get(t, base+"/stats/prometheus")
	if code != 200 {
		t.Fatalf("/stats/prometheus = %d", code)
	}
	fams := parseMetrics(t, body)
	for name, want := range map[string]float64{
		"envoy_cluster_upstream_rq_total": 7,
		"istio_agent_xds_pushes_total":    3,
		"app_requests_total":              42,
		"shared_gauge":                    1,
	} {
		if got := value(fams[name]); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := value(fams["istio_agent_scrape_failures_total"], "source", "application"); got != 0 {
		t.Errorf("scrape failures for the app = %v, want 0", got)
	}
}

// TestMetricsSourceFailures: a source that is down or serves garbage is left out and counted; the rest of the
// scrape stays valid.
func TestMetricsSourceFailures(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	agentReg := prometheus.NewRegistry()
	agentReg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "agent_up"}, func() float64 { return 1 }))
	base := start(t, Options{
		PrometheusAddr: closed.Listener.Addr().String(),
		AgentMetrics:   agentReg,
		AppMetrics: appMetricsServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "# TYPE broken counter\nbroken{ 1\n")
		})),
	})
	get(t, base+"/stats/prometheus")
	_, body := get(t, base+"/stats/prometheus")
	fams := parseMetrics(t, body)
	if value(fams["agent_up"]) != 1 {
		t.Errorf("agent metrics missing:\n%s", body)
	}
	if fams["broken"] != nil {
		t.Errorf("the app's malformed family leaked into the scrape")
	}
	for _, source := range []string{"envoy", "application"} {
		if got := value(fams["istio_agent_scrape_failures_total"], "source", source); got != 1 {
			t.Errorf("scrape failures for %s = %v, want 1 (counted by the first scrape)", source, got)
		}
	}
}

// TestAppProbeHTTP: an httpGet probe passes and fails as the app does, with the app's status code, the probe's
// headers and path, over HTTP and HTTPS, within its timeout.
func TestAppProbeHTTP(t *testing.T) {
	var healthy atomic.Bool
	healthy.Store(true)
	app := http.NewServeMux()
	app.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Probe") != "liveness" || r.Host != "app.local" || r.URL.RawQuery != "deep=1" ||
			r.UserAgent() != "kube-probe/1.34" {
			http.Error(w, "wrong request", http.StatusBadRequest)
			return
		}
		if !healthy.Load() {
			http.Error(w, "unhealthy", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	app.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) })
	app.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	plain := httptest.NewServer(app)
	defer plain.Close()
	tlsApp := httptest.NewTLSServer(app)
	defer tlsApp.Close()
	port := func(s *httptest.Server) int { return s.Listener.Addr().(*net.TCPAddr).Port }

	probes := fmt.Sprintf(`{
		"/app-health/app/livez": {"httpGet": {"path": "/healthz?deep=1", "port": %[1]d, "scheme": "HTTP",
			"httpHeaders": [{"name": "X-Probe", "value": "liveness"}, {"name": "Host", "value": "app.local"}]},
			"timeoutSeconds": 1},
		"/app-health/app/readyz": {"httpGet": {"path": "/healthz?deep=1", "port": %[2]d, "scheme": "HTTPS",
			"httpHeaders": [{"name": "X-Probe", "value": "liveness"}, {"name": "Host", "value": "app.local"}]}},
		"/app-health/app/startupz": {"httpGet": {"path": "/moved", "port": "%[1]d"}},
		"/app-health/slow/livez": {"httpGet": {"path": "/slow", "port": %[1]d}, "timeoutSeconds": 1}
	}`, port(plain), port(tlsApp))
	base := start(t, Options{AppProbes: probes})

	for _, path := range []string{"/app-health/app/livez", "/app-health/app/readyz"} {
		if code, body := get(t, base+path); code != http.StatusNoContent {
			t.Errorf("%s healthy app = %d %q, want the app's 204", path, code, body)
		}
	}
	healthy.Store(false)
	for _, path := range []string{"/app-health/app/livez", "/app-health/app/readyz"} {
		if code, _ := get(t, base+path); code != http.StatusInternalServerError {
			t.Errorf("%s unhealthy app = %d, want the app's 500", path, code)
		}
	}
	if code, _ := get(t, base+"/app-health/app/startupz"); code != 200 {
		t.Errorf("redirecting app = %d, want 200", code)
	}
	began := time.Now()
	if code, _ := get(t, base+"/app-health/slow/livez"); code != 503 {
		t.Errorf("app slower than timeoutSeconds = %d, want 503", code)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("slow probe took %v, timeoutSeconds is 1", took)
	}
	if code, _ := get(t, base+"/app-health/other/livez"); code != 404 {
		t.Errorf("unknown probe path = %d, want 404", code)
	}
	plain.Close()
	if code, _ := get(t, base+"/app-health/app/livez"); code != 503 {
		t.Errorf("app down = %d, want 503", code)
	}
}

// TestAppProbeTCPAndGRPC: tcpSocket probes pass while the port accepts; grpc probes follow the health service.
func TestAppProbeTCPAndGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	go g.Serve(ln)
	defer g.Stop()
	hs.SetServingStatus("app.v1.Greeter", healthpb.HealthCheckResponse_SERVING)
	port := ln.Addr().(*net.TCPAddr).Port

	base := start(t, Options{AppProbes: fmt.Sprintf(`{
		"/app-health/app/livez": {"tcpSocket": {"port": %[1]d}},
		"/app-health/app/readyz": {"grpc": {"port": %[1]d, "service": "app.v1.Greeter"}, "timeoutSeconds": 2}
	}`, port)})

	if code, _ := get(t, base+"/app-health/app/livez"); code != 200 {
		t.Errorf("tcp probe, port open = %d", code)
	}
	if code, _ := get(t, base+"/app-health/app/readyz"); code != 200 {
		t.Errorf("grpc probe, SERVING = %d", code)
	}
	hs.SetServingStatus("app.v1.Greeter", healthpb.HealthCheckResponse_NOT_SERVING)
	if code, body := get(t, base+"/app-health/app/readyz"); code != 503 || !strings.Contains(body, "NOT_SERVING") {
		t.Errorf("grpc probe, NOT_SERVING = %d %q", code, body)
	}
	g.Stop()
	if code, _ := get(t, base+"/app-health/app/livez"); code != 503 {
		t.Errorf("tcp probe, port closed = %d", code)
	}
}

// TestQuit: POST /quitquitquit calls OnQuit; other methods are refused and do not.
func TestQuit(t *testing.T) {
	quit := make(chan struct{}, 2)
	base := start(t, Options{OnQuit: func() { quit <- struct{}{} }})
	if code, _ := get(t, base+"/quitquitquit"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /quitquitquit = %d, want 405", code)
	}
	if code, _ := do(t, http.MethodPost, base+"/quitquitquit"); code != 200 {
		t.Fatalf("POST /quitquitquit = %d", code)
	}
	select {
	case <-quit:
	case <-time.After(5 * time.Second):
		t.Fatal("OnQuit not called")
	}
	if len(quit) != 0 {
		t.Error("OnQuit called for the refused GET")
	}
}

// TestLocalOnly: quitquitquit and pprof refuse callers outside the pod.
func TestLocalOnly(t *testing.T) {
	var calls atomic.Int32
	s, err := New(Options{Addr: "127.0.0.1:0", OnQuit: func() { calls.Add(1) }, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.ln.Close()
	for _, c := range []struct{ method, path string }{{"POST", "/quitquitquit"}, {"GET", "/debug/pprof/"}} {
		for remote, want := range map[string]int{"10.244.0.9:40000": 403, "127.0.0.1:40000": 200} {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(c.method, c.path, nil)
			req.RemoteAddr = remote
			s.srv.Handler.ServeHTTP(rec, req)
			if rec.Code != want {
				t.Errorf("%s %s from %s = %d, want %d", c.method, c.path, remote, rec.Code, want)
			}
		}
	}
	// OnQuit runs in its own goroutine; the local call above is the only one allowed to trigger it.
	testutil.Eventually(t, 5*time.Second, "OnQuit from localhost", func() bool { return calls.Load() == 1 })
}

// TestDebugAndNothingElse: /debug/ndsz serves NDSZ's JSON; Envoy admin paths are never served, even with an
// admin address configured.
func TestDebugAndNothingElse(t *testing.T) {
	adminHit := make(chan string, 10)
	admin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		adminHit <- r.URL.Path
		fmt.Fprintln(w, "LIVE")
	}))
	defer admin.Close()
	base := start(t, Options{AdminAddr: admin.Listener.Addr().String(),
		NDSZ: func() any { return map[string][]string{"reviews.default.svc.cluster.local": {"10.96.0.7"}} }})
	if code, body := get(t, base+"/debug/ndsz"); code != 200 || !strings.Contains(body, `"10.96.0.7"`) {
		t.Errorf("/debug/ndsz = %d %q", code, body)
	}
	if code, _ := get(t, base+"/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ from loopback = %d", code)
	}
	for _, path := range []string{"/config_dump", "/certs", "/stats", "/clusters", "/ready", "/quitquitquit", "/logging"} {
		if code, _ := get(t, base+path); code != 404 {
			t.Errorf("GET %s = %d, want 404", path, code)
		}
	}
	if len(adminHit) != 0 {
		t.Errorf("admin was called: %s", <-adminHit)
	}

	noDebug := start(t, Options{})
	if code, _ := get(t, noDebug+"/debug/ndsz"); code != 404 {
		t.Errorf("/debug/ndsz without NDSZ = %d, want 404", code)
	}
}

// TestBadOptions: configuration the agent cannot honour fails New with the variable named.
func TestBadOptions(t *testing.T) {
	for name, c := range map[string]struct {
		opts Options
		want string
	}{
		"probes not JSON":          {Options{AppProbes: `{`}, "ISTIO_KUBE_APP_PROBERS"},
		"probe outside app-health": {Options{AppProbes: `{"/quitquitquit":{"tcpSocket":{"port":80}}}`}, "/app-health/"},
		"named port":               {Options{AppProbes: `{"/app-health/a/livez":{"httpGet":{"path":"/","port":"http"}}}`}, "port"},
		"two handlers": {Options{AppProbes: `{"/app-health/a/livez":{"httpGet":{"port":80},"tcpSocket":{"port":80}}}`},
			"exactly one"},
		"bad scheme":      {Options{AppProbes: `{"/app-health/a/livez":{"httpGet":{"port":80,"scheme":"FTP"}}}`}, "scheme"},
		"metrics port":    {Options{AppMetrics: `{"scrape":"true","port":"metrics"}`}, "ISTIO_PROMETHEUS_ANNOTATIONS"},
		"metrics invalid": {Options{AppMetrics: `[]`}, "ISTIO_PROMETHEUS_ANNOTATIONS"},
	} {
		c.opts.Addr = "127.0.0.1:0"
		s, err := New(c.opts)
		if err == nil {
			s.ln.Close()
			t.Errorf("%s: New succeeded", name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want it to mention %q", name, err, c.want)
		}
	}
}
