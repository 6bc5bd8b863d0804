package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"

	"github.com/meshd/meshd/internal/testutil"
	meshdbootstrap "github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/pkg/xds"
	"github.com/meshd/meshd/test/proxydouble/doubletest"
)

var binary string

func TestMain(m *testing.M) { os.Exit(doubletest.Main(m, &binary)) }

// shortDir is a temporary directory short enough for Unix socket paths.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startMeshd runs the discovery server in file mode over an empty config directory.
func startMeshd(t *testing.T) *meshdbootstrap.Server {
	t.Helper()
	args, err := meshdbootstrap.DefaultArgs()
	if err != nil {
		t.Fatal(err)
	}
	args.GRPCAddr, args.HTTPAddr, args.MonitoringAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	args.SecureGRPCAddr, args.HTTPSAddr = "", ""
	args.ConfigDir = t.TempDir()
	args.MeshConfigFile = ""
	args.Debounce = xds.DebounceOptions{After: 20 * time.Millisecond, Max: time.Second, EDS: true}
	args.ShutdownDuration = 2 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	s, err := meshdbootstrap.NewServer(ctx, args, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		s.Wait()
	})
	return s
}

// serveUDS serves meshd's ADS on a Unix socket, as the agent's XDS proxy would.
func serveUDS(t *testing.T, s *meshdbootstrap.Server, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	s.XDS.Register(g)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
}

type double struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	out  *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func start(t *testing.T, b *doubletest.Bootstrap, env ...string) *double {
	t.Helper()
	d := &double{cmd: exec.Command(binary, b.Args...), done: make(chan struct{}), out: &lockedBuffer{}}
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("proxydouble output:\n%s", d.out.String())
		}
	})
	return d
}

// exitCode waits for the double to exit and returns its status.
func (d *double) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Fatal("proxydouble did not exit")
	}
	var ee *exec.ExitError
	if errors.As(d.err, &ee) {
		return ee.ExitCode()
	}
	if d.err != nil {
		t.Fatal(d.err)
	}
	return 0
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	return do(t, http.MethodGet, url)
}

func do(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// stat reads one value from the admin /stats text.
func stat(t *testing.T, admin, name string) int {
	t.Helper()
	_, body := get(t, "http://"+admin+"/stats?usedonly")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("stat %s: %v", name, err)
			}
			return n
		}
	}
	t.Fatalf("stat %s missing from:\n%s", name, body)
	return 0
}

// TestDeltaLifecycle runs the double against meshd's ADS over a Unix socket: it is not ready until its first CDS
// and LDS updates are ACKed (and reconnects when the socket appears late), then serves stats, its static
// listeners, drain and quitquitquit.
func TestDeltaLifecycle(t *testing.T) {
	dir := shortDir(t)
	agent := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "agent saw %s", r.URL.Path)
	})}
	agentLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go agent.Serve(agentLn)
	t.Cleanup(func() { agent.Close() })

	b, err := doubletest.Write(doubletest.Options{Dir: dir, XDSSocket: filepath.Join(dir, "XDS"),
		StatusPort: agentLn.Addr().(*net.TCPAddr).Port})
	if err != nil {
		t.Fatal(err)
	}
	d := start(t, b)
	admin := "http://" + b.AdminAddr
	testutil.Eventually(t, 10*time.Second, "admin up", func() bool { c, _ := get(t, admin+"/ready"); return c != 0 })
	if code, body := get(t, admin+"/ready"); code != 503 || strings.TrimSpace(body) != "PRE_INITIALIZING" {
		t.Fatalf("/ready without xDS = %d %q, want 503 PRE_INITIALIZING", code, body)
	}

	s := startMeshd(t)
	serveUDS(t, s, filepath.Join(dir, "XDS"))
	testutil.Eventually(t, 15*time.Second, "LIVE", func() bool {
		code, body := get(t, admin+"/ready")
		return code == 200 && strings.TrimSpace(body) == "LIVE"
	})

	// meshd saw ACKs for the wildcard CDS and LDS watches.
	conns := s.XDS.Connections()
	if len(conns) != 1 {
		t.Fatalf("meshd has %d connections", len(conns))
	}
	if id := conns[0].Proxy().ID; id != b.Config.NodeID {
		t.Errorf("node id %q, want %q", id, b.Config.NodeID)
	}
	acked := map[string]bool{}
	_, watches := conns[0].Status()
	for _, w := range watches {
		acked[w.TypeURL] = w.Wildcard && w.NonceSent != "" && w.NonceAcked == w.NonceSent
	}
	if !acked[clusterType] || !acked[listenerType] {
		t.Errorf("watches %+v: want wildcard CDS and LDS with their last nonce ACKed", watches)
	}
	if n := stat(t, b.AdminAddr, "cluster_manager.cds.update_success"); n < 1 {
		t.Errorf("cds.update_success = %d", n)
	}
	if n := stat(t, b.AdminAddr, "listener_manager.lds.update_success"); n < 1 {
		t.Errorf("lds.update_success = %d", n)
	}
	if _, body := get(t, admin+`/stats?usedonly&filter=^cluster_manager\.cds\.`); strings.Contains(body, "listener_manager") ||
		!strings.Contains(body, "cluster_manager.cds.update_success: ") {
		t.Errorf("filtered /stats = %q", body)
	}

	// The 15090 stand-in routes to admin's /stats/prometheus, the 15021 stand-in to the agent.
	code, body := get(t, "http://"+b.PrometheusAddr+"/stats/prometheus")
	if code != 200 {
		t.Fatalf("prometheus listener = %d %s", code, body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("prometheus text: %v\n%s", err, body)
	}
	if f := fams["envoy_cluster_manager_cds_update_success"]; f == nil || f.GetMetric()[0].GetCounter().GetValue() < 1 {
		t.Errorf("envoy_cluster_manager_cds_update_success = %v", f)
	}
	if code, body := get(t, "http://"+b.ReadinessAddr+"/healthz/ready"); code != 200 || body != "agent saw /healthz/ready" {
		t.Errorf("readiness listener = %d %q", code, body)
	}

	if code, _ := get(t, admin+"/drain_listeners?graceful&inboundonly"); code != 405 {
		t.Errorf("GET /drain_listeners = %d, want 405", code)
	}
	// Only a drain asking for both graceful and inboundonly counts as the agent's termination drain.
	for _, q := range []string{"graceful", "graceful&inboundonly"} {
		if code, _ := do(t, http.MethodPost, admin+"/drain_listeners?"+q); code != 200 {
			t.Fatalf("POST /drain_listeners?%s = %d", q, code)
		}
	}
	if n := stat(t, b.AdminAddr, "proxydouble.drain_listeners.total"); n != 2 {
		t.Errorf("drains = %d, want 2", n)
	}
	if n := stat(t, b.AdminAddr, "proxydouble.drain_listeners.graceful_inboundonly"); n != 1 {
		t.Errorf("graceful inbound drains = %d, want 1", n)
	}
	if n := stat(t, b.AdminAddr, "listener_manager.total_listeners_draining"); n != 1 {
		t.Errorf("total_listeners_draining = %d, want 1", n)
	}

	if code, _ := do(t, http.MethodPost, admin+"/quitquitquit"); code != 200 {
		t.Fatalf("POST /quitquitquit = %d", code)
	}
	if code := d.exitCode(t); code != 0 {
		t.Fatalf("exit status after quitquitquit = %d", code)
	}
}

// TestSotW: with ISTIO_DELTA_XDS=false the bootstrap says GRPC and the double ACKs state-of-the-world responses.
func TestSotW(t *testing.T) {
	dir := shortDir(t)
	s := startMeshd(t)
	serveUDS(t, s, filepath.Join(dir, "XDS"))
	b, err := doubletest.Write(doubletest.Options{Dir: dir, XDSSocket: filepath.Join(dir, "XDS"), SotW: true})
	if err != nil {
		t.Fatal(err)
	}
	start(t, b)
	testutil.Eventually(t, 15*time.Second, "LIVE over SotW", func() bool {
		code, _ := get(t, "http://"+b.AdminAddr+"/ready")
		return code == 200
	})
	_, watches := s.XDS.Connections()[0].Status()
	for _, w := range watches {
		if w.VersionAcked == "" || w.VersionAcked != w.VersionSent {
			t.Errorf("watch %s: version sent %q, acked %q", w.TypeURL, w.VersionSent, w.VersionAcked)
		}
	}
	if len(watches) < 2 {
		t.Errorf("watches %+v: want CDS and LDS", watches)
	}
}

// TestSIGTERM: Envoy exits 0 on SIGTERM, and so does the double.
func TestSIGTERM(t *testing.T) {
	dir := shortDir(t)
	b, err := doubletest.Write(doubletest.Options{Dir: dir, XDSSocket: filepath.Join(dir, "XDS")})
	if err != nil {
		t.Fatal(err)
	}
	d := start(t, b)
	testutil.Eventually(t, 10*time.Second, "admin up", func() bool {
		c, _ := get(t, "http://"+b.AdminAddr+"/ready")
		return c != 0
	})
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := d.exitCode(t); code != 0 {
		t.Fatalf("exit status after SIGTERM = %d", code)
	}
}

// TestExitCode: PROXYDOUBLE_EXIT_CODE makes the double exit with that status, after PROXYDOUBLE_EXIT_AFTER.
func TestExitCode(t *testing.T) {
	dir := shortDir(t)
	b, err := doubletest.Write(doubletest.Options{Dir: dir, XDSSocket: filepath.Join(dir, "XDS")})
	if err != nil {
		t.Fatal(err)
	}
	d := start(t, b, "PROXYDOUBLE_EXIT_CODE=7", "PROXYDOUBLE_EXIT_AFTER=300ms")
	if code := d.exitCode(t); code != 7 {
		t.Fatalf("exit status = %d, want 7", code)
	}
}
