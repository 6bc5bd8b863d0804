// Package proxy supervises the sidecar's proxy process (Envoy) the way pilot-agent does: the agent lives as long
// as the proxy, exits with its status, and on termination drains inbound listeners before stopping it.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Defaults.
const (
	DefaultTerminationDrain = 5 * time.Second
	// stopGrace is how long a SIGTERMed proxy may take before it is killed.
	stopGrace = 5 * time.Second
)

// Options configure the proxy process.
type Options struct {
	// Binary is the proxy executable, Args its command line (bootstrap.EnvoyArgs), Env its environment (nil
	// inherits the agent's) and Dir its working directory ("" is the agent's).
	Binary string
	Args   []string
	Env    []string
	Dir    string
	// AdminAddr is the proxy's admin address, e.g. "127.0.0.1:15000".
	AdminAddr string
	// TerminationDrain is how long Drain lets connections drain before stopping the proxy
	// (TERMINATION_DRAIN_DURATION_SECONDS); 0 means DefaultTerminationDrain.
	TerminationDrain time.Duration
	Logger           *slog.Logger
}

// ExitError reports a proxy that exited with a non-zero status. A proxy killed by a signal reports 128+signal,
// as a shell would, so the agent's own exit status still tells what happened.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("proxy exited with status %d", e.Code) }

// Proxy is one run of the proxy process.
type Proxy struct {
	opts   Options
	log    *slog.Logger
	client *http.Client
	// grace is stopGrace; tests shorten it.
	grace time.Duration

	mu      sync.Mutex
	process *os.Process // set once started
	started bool
	// exited is closed when the process has been waited for.
	exited chan struct{}
}

// New returns a Proxy; nothing starts until Run.
func New(opts Options) *Proxy {
	if opts.TerminationDrain == 0 {
		opts.TerminationDrain = DefaultTerminationDrain
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Proxy{
		opts:   opts,
		log:    opts.Logger.With("component", "proxy"),
		client: &http.Client{Timeout: 5 * time.Second},
		grace:  stopGrace,
		exited: make(chan struct{}),
	}
}

// Run starts the proxy with its output passed through and returns when it exits: nil on status 0, *ExitError
// otherwise. Cancelling ctx stops it hard (SIGTERM, SIGKILL after a grace period) and returns an error wrapping
// ctx's. Run may be called once.
func (p *Proxy) Run(ctx context.Context) error {
	// Pdeathsig fires when the thread that started the child exits: keep this goroutine on that thread until
	// the proxy is gone, so that only the agent's own death kills it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.CommandContext(ctx, p.opts.Binary, p.opts.Args...)
	cmd.Env, cmd.Dir = p.opts.Env, p.opts.Dir
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = p.grace
	// If the agent dies without stopping it, the proxy must not run on unsupervised.
	cmd.SysProcAttr = dieWithParent()

	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		return errors.New("proxy: already started")
	}
	p.started = true
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		close(p.exited)
		return fmt.Errorf("start proxy %s: %w", p.opts.Binary, err)
	}
	p.process = cmd.Process
	p.mu.Unlock()
	p.log.Info("proxy started", "binary", p.opts.Binary, "pid", cmd.Process.Pid)

	err := cmd.Wait()
	close(p.exited)
	if ctx.Err() != nil {
		p.log.Info("proxy stopped", "reason", context.Cause(ctx), "status", cmd.ProcessState.String())
		return fmt.Errorf("proxy stopped: %w", ctx.Err())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		p.log.Warn("proxy exited", "status", code)
		return &ExitError{Code: code}
	}
	if err != nil {
		return fmt.Errorf("wait for proxy: %w", err)
	}
	p.log.Info("proxy exited", "status", 0)
	return nil
}

// Drain is the agent's termination: it asks the proxy to drain inbound listeners gracefully, lets connections
// drain for TerminationDrain, then SIGTERMs the proxy and waits until it has exited (killing it if it takes
// longer than the grace period). A failed drain request is logged and termination goes on: the proxy must stop
// either way. Run returns the proxy's status as usual.
func (p *Proxy) Drain(ctx context.Context) error {
	p.mu.Lock()
	proc := p.process
	p.mu.Unlock()
	if proc == nil {
		return errors.New("proxy: not running")
	}
	if err := p.drainListeners(ctx); err != nil {
		p.log.Warn("drain listeners failed; stopping the proxy anyway", "err", err)
	} else {
		p.log.Info("draining inbound listeners", "duration", p.opts.TerminationDrain)
	}
	select {
	case <-time.After(p.opts.TerminationDrain):
	case <-p.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain proxy: %w", ctx.Err())
	}
	if err := proc.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop proxy: %w", err)
	}
	grace := time.NewTimer(p.grace)
	defer grace.Stop()
	select {
	case <-p.exited:
		return nil
	case <-grace.C:
		p.log.Warn("proxy ignored SIGTERM; killing it", "grace", p.grace)
		if err := proc.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("kill proxy: %w", err)
		}
	case <-ctx.Done():
		return fmt.Errorf("stop proxy: %w", ctx.Err())
	}
	select {
	case <-p.exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop proxy: %w", ctx.Err())
	}
}

// drainListeners stops inbound listeners from accepting while open connections finish, as Istio does: outbound
// listeners stay up so the app can still make calls while it shuts down.
func (p *Proxy) drainListeners(ctx context.Context) error {
	url := "http://" + p.opts.AdminAddr + "/drain_listeners?graceful&inboundonly"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return fmt.Errorf("drain request: %w", err)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("POST %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s: %s: %s", url, resp.Status, body)
	}
	return nil
}
