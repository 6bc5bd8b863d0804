// Package agent_test runs the agent binary as a pod would (its environment, its working directory as the
// container's root) against meshd's discovery server, with real workloads beside it: proxyless grpc-go echo
// servers and clients, and the proxy double standing in for Envoy.
package agent_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
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
)

// bins holds the binaries built once for the package: agent, grpc-echo and proxydouble.
var bins string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshd-agent-bins")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir)
		for name, pkg := range map[string]string{
			"agent": "../../cmd/agent", "grpc-echo": "../../cmd/grpc-echo", "proxydouble": "../proxydouble",
		} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
				return 1
			}
		}
		bins = dir
		return m.Run()
	}()
	os.Exit(code)
}

// process is a started binary whose output is kept for failure messages and can be read line by line.
type process struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	// lines carries stdout lines when the process was started with lines enabled.
	lines chan string
	done  chan struct{}
	err   error
}

type procOptions struct {
	dir   string
	env   []string
	lines bool // deliver stdout line by line on lines (stderr still goes to the log)
}

func startProcess(t *testing.T, name string, o procOptions, bin string, args ...string) *process {
	t.Helper()
	p := &process{t: t, name: name, cmd: exec.Command(filepath.Join(bins, bin), args...), done: make(chan struct{})}
	p.cmd.Dir = o.dir
	p.cmd.Env = o.env
	// A child the process leaves behind may hold its output pipes open: do not wait for them.
	p.cmd.WaitDelay = 2 * time.Second
	p.cmd.Stderr = &lockedWriter{p: p}
	var stdout io.ReadCloser
	if o.lines {
		p.lines = make(chan string, 1000)
		var err error
		if stdout, err = p.cmd.StdoutPipe(); err != nil {
			t.Fatal(err)
		}
	} else {
		p.cmd.Stdout = &lockedWriter{p: p}
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		if stdout != nil {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				p.write([]byte(sc.Text() + "\n"))
				select {
				case p.lines <- sc.Text():
				default:
				}
			}
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("--- %s output:\n%s", name, p.output())
		}
	})
	return p
}

type lockedWriter struct{ p *process }

func (w *lockedWriter) Write(b []byte) (int, error) { w.p.write(b); return len(b), nil }

func (p *process) write(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out.Write(b)
}

func (p *process) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// signal sends sig and returns the exit code once the process has exited (-1 if killed by a signal).
func (p *process) signal(sig syscall.Signal, timeout time.Duration) int {
	p.t.Helper()
	_ = p.cmd.Process.Signal(sig)
	return p.wait(timeout)
}

func (p *process) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s did not exit within %s", p.name, timeout)
	}
	var exit *exec.ExitError
	if errors.As(p.err, &exit) {
		return exit.ExitCode()
	}
	return 0
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// podDir is a pod's root: the agent's working directory, short enough for Unix socket paths.
func podDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// agentEnv is a pod's istio-proxy environment, plus extra settings.
func agentEnv(pod, ip string, proxyConfig string, extra ...string) []string {
	env := []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
		"POD_NAME=" + pod, "POD_NAMESPACE=default", "INSTANCE_IP=" + ip, "SERVICE_ACCOUNT=default",
		"PROXY_CONFIG=" + proxyConfig, "XDS_PLAINTEXT=true",
	}
	return append(env, extra...)
}

func httpGet(url string) (int, string, error) {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func httpStatus(url string) int {
	code, _, err := httpGet(url)
	if err != nil {
		return 0
	}
	return code
}

func itoa(n int) string { return strconv.Itoa(n) }

func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// replaceInFile edits a config file atomically, as an editor would.
func replaceInFile(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s does not contain %q", path, old)
	}
	tmp := filepath.Join(filepath.Dir(path), ".edit.tmp")
	if err := os.WriteFile(tmp, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
