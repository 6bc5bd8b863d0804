package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/test/proxydouble/doubletest"
)

var double string

func TestMain(m *testing.M) { os.Exit(doubletest.Main(m, &double)) }

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// setup writes a bootstrap for the double (no ADS server: the proxy's lifecycle does not depend on it).
func setup(t *testing.T) *doubletest.Bootstrap {
	t.Helper()
	dir := t.TempDir()
	b, err := doubletest.Write(doubletest.Options{Dir: dir, XDSSocket: filepath.Join(dir, "XDS")})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// run starts Run in the background; the channel yields its result, cancel cancels Run's context. Whatever the
// test did, the proxy is gone at cleanup, so a failing test leaves no process behind.
func run(t *testing.T, p *Proxy) (result <-chan error, cancel context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		ch <- p.Run(ctx)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		p.mu.Lock()
		if p.process != nil {
			p.process.Kill()
		}
		p.mu.Unlock()
		<-done
	})
	return ch, cancel
}

// bounded is a context for Drain, so a Drain that never returns fails the test instead of hanging it.
func bounded(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wait(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

func adminUp(t *testing.T, admin string) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, "proxy admin up", func() bool {
		resp, err := http.Get("http://" + admin + "/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
}

// stat reads one value from the double's admin /stats, -1 if unavailable.
func stat(admin, name string) int {
	resp, err := http.Get("http://" + admin + "/stats")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}

// TestExitStatus: the proxy's non-zero status comes back as *ExitError, so the agent can exit with it. The
// double runs with a relative bootstrap path, so it only gets to its exit hook when Dir and Env are applied.
func TestExitStatus(t *testing.T) {
	b := setup(t)
	args := append([]string{"-c", filepath.Base(b.Path)}, b.Args[2:]...)
	p := New(Options{Binary: double, Args: args, Dir: filepath.Dir(b.Path), AdminAddr: b.AdminAddr, Logger: quiet(),
		Env: append(os.Environ(), "PROXYDOUBLE_EXIT_CODE=3", "PROXYDOUBLE_EXIT_AFTER=200ms")})
	ch, _ := run(t, p)
	err := wait(t, ch)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 {
		t.Fatalf("Run = %v, want ExitError{3}", err)
	}
}

// TestExitZero: a clean exit (here /quitquitquit) is a nil error.
func TestExitZero(t *testing.T) {
	b := setup(t)
	p := New(Options{Binary: double, Args: b.Args, AdminAddr: b.AdminAddr, Logger: quiet()})
	ch, _ := run(t, p)
	adminUp(t, b.AdminAddr)
	resp, err := http.Post("http://"+b.AdminAddr+"/quitquitquit", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if err := wait(t, ch); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
}

// TestStartFailure: a missing binary fails Run at once with the path in the error.
func TestStartFailure(t *testing.T) {
	p := New(Options{Binary: filepath.Join(t.TempDir(), "no-envoy"), Logger: quiet()})
	if err := p.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "no-envoy") {
		t.Fatalf("Run = %v, want a start error naming the binary", err)
	}
	if err := p.Drain(bounded(t)); err == nil {
		t.Fatal("Drain of a proxy that never started succeeded")
	}
}

// TestDrain: Drain POSTs a graceful inbound-only drain while the proxy still runs, keeps it running for the
// termination drain duration, then stops it with SIGTERM (the double exits 0 on SIGTERM, so Run returns nil).
func TestDrain(t *testing.T) {
	b := setup(t)
	const drainFor = 1500 * time.Millisecond
	p := New(Options{Binary: double, Args: b.Args, AdminAddr: b.AdminAddr, TerminationDrain: drainFor, Logger: quiet()})
	ch, _ := run(t, p)
	adminUp(t, b.AdminAddr)

	began := time.Now()
	drained := make(chan error, 1)
	go func() { drained <- p.Drain(bounded(t)) }()
	testutil.Eventually(t, drainFor, "the drain request, seen while the proxy still runs", func() bool {
		return stat(b.AdminAddr, "proxydouble.drain_listeners.graceful_inboundonly") == 1
	})
	if err := wait(t, drained); err != nil {
		t.Fatalf("Drain = %v", err)
	}
	if took := time.Since(began); took < drainFor {
		t.Errorf("Drain returned after %v, before the termination drain duration %v", took, drainFor)
	}
	if _, err := http.Get("http://" + b.AdminAddr + "/ready"); err == nil {
		t.Fatal("Drain returned while the proxy was still running")
	}
	if err := wait(t, ch); err != nil {
		t.Fatalf("Run after Drain = %v, want nil (SIGTERM is a clean exit)", err)
	}
}

// TestDrainWithoutAdmin: when the drain request fails the proxy is still stopped.
func TestDrainWithoutAdmin(t *testing.T) {
	b := setup(t)
	ports, err := doubletest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	p := New(Options{Binary: double, Args: b.Args, AdminAddr: "127.0.0.1:" + strconv.Itoa(ports[0]),
		TerminationDrain: 10 * time.Millisecond, Logger: quiet()})
	ch, _ := run(t, p)
	adminUp(t, b.AdminAddr)
	if err := p.Drain(bounded(t)); err != nil {
		t.Fatalf("Drain = %v", err)
	}
	if err := wait(t, ch); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// TestDrainKillsStubbornProxy: a proxy that ignores SIGTERM is killed after the grace period.
func TestDrainKillsStubbornProxy(t *testing.T) {
	b := setup(t)
	p := New(Options{Binary: double, Args: b.Args, AdminAddr: b.AdminAddr, TerminationDrain: 10 * time.Millisecond,
		Env: append(os.Environ(), "PROXYDOUBLE_IGNORE_SIGTERM=true"), Logger: quiet()})
	p.grace = 300 * time.Millisecond
	ch, _ := run(t, p)
	adminUp(t, b.AdminAddr)
	if err := p.Drain(bounded(t)); err != nil {
		t.Fatalf("Drain = %v", err)
	}
	var ee *ExitError
	if err := wait(t, ch); !errors.As(err, &ee) || ee.Code != 128+int(syscall.SIGKILL) {
		t.Fatalf("Run = %v, want ExitError{%d} (killed)", err, 128+int(syscall.SIGKILL))
	}
}

// TestCancelStops: cancelling Run's context stops the proxy, and Run says why.
func TestCancelStops(t *testing.T) {
	for _, stubborn := range []bool{false, true} {
		t.Run(fmt.Sprintf("ignoresSIGTERM=%v", stubborn), func(t *testing.T) {
			b := setup(t)
			env := os.Environ()
			if stubborn {
				env = append(env, "PROXYDOUBLE_IGNORE_SIGTERM=true")
			}
			p := New(Options{Binary: double, Args: b.Args, AdminAddr: b.AdminAddr, Env: env, Logger: quiet()})
			p.grace = 300 * time.Millisecond
			ch, cancel := run(t, p)
			adminUp(t, b.AdminAddr)
			began := time.Now()
			cancel()
			if err := wait(t, ch); !errors.Is(err, context.Canceled) {
				t.Fatalf("Run = %v, want context.Canceled", err)
			}
			if stubborn && time.Since(began) < p.grace {
				t.Errorf("Run returned after %v, before the SIGKILL grace %v", time.Since(began), p.grace)
			}
			if _, err := http.Get("http://" + b.AdminAddr + "/ready"); err == nil {
				t.Fatal("proxy admin still answers after Run returned")
			}
		})
	}
}
