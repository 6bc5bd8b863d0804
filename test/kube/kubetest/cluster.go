// Package kubetest runs a real Kubernetes control plane on 127.0.0.1 for
// end-to-end tests: etcd, kube-apiserver and kube-controller-manager, built
// and cached by `make kube-tools` (hack/kube-tools.sh). There is no kubelet or
// scheduler; StartFakeKubelet stands in for both.
//
// One cluster per test:
//
//	c := kubetest.Start(t) // stopped when t ends
//
// or one cluster shared by a test binary, since starting takes seconds:
//
//	func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }
//	func TestX(t *testing.T)    { c := kubetest.Shared(t); ... }
//
// When the binaries are missing the test is skipped, unless MESHD_REQUIRE_KUBE=1
// (set by `make test`), where it fails.
//
// The cluster: everything listens on 127.0.0.1 only; the admin token is in
// system:masters; authorization is Node,RBAC with the default admission
// plugins (ServiceAccount included); service-account tokens are signed for
// ServiceAccountIssuer and accepted with the audiences in APIAudiences; the
// controller manager runs the deployment, replicaset, endpointslice,
// serviceaccount(-token), root-ca-certificate-publisher, namespace and
// garbage-collector controllers. The "kubernetes" Service has no endpoints: the
// apiserver's endpoint reconciler refuses a loopback address.
//
// Every process runs in its own process group and gets SIGKILL from Linux when
// the test binary dies, so a crash or a test timeout leaves nothing running.
package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	// AdminUser is the user of the cluster's admin token, in group system:masters.
	AdminUser = "kubetest-admin"
	// ServiceAccountIssuer is the issuer of service-account tokens.
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
	// ServiceCIDR is the service cluster IP range.
	ServiceCIDR = "10.96.0.0/16"

	// EnvBinDir names a directory holding etcd, kube-apiserver and
	// kube-controller-manager; it overrides the cache.
	EnvBinDir = "MESHD_KUBE_BIN_DIR"
	// EnvCache is the cache root (default $HOME/.cache/meshd); the binaries are in
	// $MESHD_CACHE/kube/<kubernetes version>/bin.
	EnvCache = "MESHD_CACHE"
	// EnvRequire=1 turns "binaries missing" from a skip into a failure.
	EnvRequire = "MESHD_REQUIRE_KUBE"
	// EnvKeep=1 keeps the cluster directory (certificates, logs) after Stop.
	EnvKeep = "MESHD_KUBE_KEEP"

	buildHint = "run `make kube-tools` (hack/kube-tools.sh) to build them, or set " + EnvBinDir
)

// APIAudiences are the audiences kube-apiserver accepts on tokens: meshd's CA
// verifies tokens with audience istio-ca.
var APIAudiences = []string{"istio-ca", ServiceAccountIssuer}

// controllers run by kube-controller-manager: what Deployments, Services and
// ServiceAccounts need, and namespace and garbage collection.
var controllers = []string{
	"deployment-controller",
	"replicaset-controller",
	"endpointslice-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"root-ca-certificate-publisher-controller",
	"namespace-controller",
	"garbage-collector-controller",
}

// Start timeouts: generous, since `make test` runs other packages' tests alongside.
const (
	etcdTimeout      = 30 * time.Second
	apiserverTimeout = 2 * time.Minute
	kcmTimeout       = time.Minute
)

// Cluster is a running control plane.
type Cluster struct {
	// RESTConfig authenticates with the admin token (group system:masters).
	RESTConfig *rest.Config
	// Clientset is a client for RESTConfig.
	Clientset kubernetes.Interface
	// Kubeconfig is the path of a kubeconfig file for the admin token.
	Kubeconfig string
	// Dir holds the certificates, tokens, kubeconfig, logs (*.log) and etcd data.
	Dir string

	bins     binaries
	pki      *pki
	etcdURL  string
	apiPort  int
	etcd     *process
	kcm      *process
	mu       sync.Mutex // guards apisrv
	apisrv   *process
	stopOnce sync.Once
}

// Start starts a cluster for t and stops it when t ends. It skips t when the
// binaries are missing (fails if MESHD_REQUIRE_KUBE=1).
func Start(t testing.TB) *Cluster {
	t.Helper()
	c, err := start(t.Logf)
	if err != nil {
		fail(t, err)
	}
	t.Cleanup(func() { c.stop(t.Failed()) })
	return c
}

var shared struct {
	sync.Mutex
	inRun bool
	c     *Cluster
	err   error
}

// Run runs the tests of m and then stops the cluster Shared started, if any,
// keeping its logs if a test failed. Call it from TestMain:
// os.Exit(kubetest.Run(m)).
func Run(m *testing.M) (code int) {
	shared.Lock()
	shared.inRun = true
	shared.Unlock()
	defer func() {
		shared.Lock()
		defer shared.Unlock()
		if shared.c != nil {
			shared.c.stop(code != 0)
			shared.c = nil
		}
	}()
	return m.Run()
}

// Shared returns the test binary's shared cluster, starting it on first use;
// TestMain must call Run. Tests that share it should use their own namespaces,
// and ones that restart the apiserver should not run in parallel with others.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	if !shared.inRun {
		t.Fatal("kubetest.Shared: TestMain must call os.Exit(kubetest.Run(m))")
	}
	if shared.c == nil && shared.err == nil {
		shared.c, shared.err = start(t.Logf)
	}
	if shared.err != nil {
		fail(t, shared.err)
	}
	return shared.c
}

var errNoBinaries = errors.New("kubetest: binaries missing")

func fail(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, errNoBinaries) && os.Getenv(EnvRequire) != "1" {
		t.Skipf("%v (set %s=1 to fail instead of skipping)", err, EnvRequire)
	}
	t.Fatal(err)
}

// start starts a cluster, again with other ports if one it picked was taken
// before the process bound it.
func start(logf func(string, ...any)) (*Cluster, error) {
	for attempt := 1; ; attempt++ {
		c, err := startOnce(logf)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return c, err
		}
		logf("kubetest: a port was taken, starting again: %v", err)
	}
}

func startOnce(logf func(string, ...any)) (_ *Cluster, err error) {
	began := time.Now()
	bins, err := findBinaries()
	if err != nil {
		return nil, err
	}
	removeStaleDirs()
	dir, err := os.MkdirTemp("", "meshd-kubetest-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, bins: bins, Kubeconfig: filepath.Join(dir, "kubeconfig")}
	defer func() {
		if err != nil {
			c.stop(true)
			err = fmt.Errorf("%w\n(logs in %s)", err, dir)
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	if c.pki, err = writePKI(dir); err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	c.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	c.apiPort = ports[2]
	server := fmt.Sprintf("https://127.0.0.1:%d", c.apiPort)

	t0 := time.Now()
	if err := c.startEtcd(ports[1]); err != nil {
		return nil, err
	}
	logf("kubetest: etcd ready at %s in %v", c.etcdURL, time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	if err := c.startAPIServer(); err != nil {
		return nil, err
	}
	logf("kubetest: kube-apiserver ready at %s in %v", server, time.Since(t0).Round(time.Millisecond))

	if err := writeKubeconfig(c.Kubeconfig, server, c.pki.caPEM, c.pki.adminToken); err != nil {
		return nil, err
	}
	c.RESTConfig = &rest.Config{
		Host:            server,
		BearerToken:     c.pki.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.pki.caPEM},
		QPS:             100,
		Burst:           200,
	}
	if c.Clientset, err = kubernetes.NewForConfig(c.RESTConfig); err != nil {
		return nil, err
	}

	t0 = time.Now()
	if err := c.startControllerManager(); err != nil {
		return nil, err
	}
	logf("kubetest: kube-controller-manager ready in %v; cluster up in %v (dir %s)",
		time.Since(t0).Round(time.Millisecond), time.Since(began).Round(time.Millisecond), dir)
	return c, nil
}

func (c *Cluster) startEtcd(peerPort int) error {
	peer := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	p, err := startProcess(c.Dir, "etcd", c.bins.etcd,
		"--name=kubetest",
		"--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+c.etcdURL,
		"--advertise-client-urls="+c.etcdURL,
		"--listen-peer-urls="+peer,
		"--initial-advertise-peer-urls="+peer,
		"--initial-cluster=kubetest="+peer,
		"--unsafe-no-fsync=true", // test data: speed over durability
		"--log-level=warn",
	)
	if err != nil {
		return err
	}
	c.etcd = p
	client := &http.Client{Timeout: 2 * time.Second}
	return p.waitUntil("healthy", etcdTimeout, func() bool {
		resp, err := client.Get(c.etcdURL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (c *Cluster) startAPIServer() error {
	p, err := startProcess(c.Dir, "kube-apiserver", c.bins.apiserver,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The endpoint reconciler refuses a loopback address, so the "kubernetes"
		// Service has no endpoints: tests reach the apiserver directly.
		"--endpoint-reconciler-type=none",
		"--secure-port="+strconv.Itoa(c.apiPort),
		"--cert-dir="+filepath.Join(c.Dir, "apiserver-certs"),
		"--tls-cert-file="+c.pki.certFile,
		"--tls-private-key-file="+c.pki.keyFile,
		"--client-ca-file="+c.pki.caFile,
		"--etcd-servers="+c.etcdURL,
		"--token-auth-file="+c.pki.tokenFile,
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range="+ServiceCIDR,
		"--service-account-issuer="+ServiceAccountIssuer,
		"--service-account-key-file="+c.pki.saPubFile,
		"--service-account-signing-key-file="+c.pki.saKeyFile,
		"--api-audiences="+strings.Join(APIAudiences, ","),
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false", // saves CPU; tests don't need fairness
		"--profiling=false",
		"--shutdown-watch-termination-grace-period=2s",
	)
	if err != nil {
		return err
	}
	c.apisrv = p
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.pki.caPEM)
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer client.CloseIdleConnections()
	url := fmt.Sprintf("https://127.0.0.1:%d/readyz", c.apiPort)
	return p.waitUntil("ready", apiserverTimeout, func() bool {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+c.pki.adminToken)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (c *Cluster) startControllerManager() error {
	p, err := startProcess(c.Dir, "kube-controller-manager", c.bins.controllerManager,
		"--kubeconfig="+c.Kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=0", // no health endpoint needed; readiness is seen through the API
		"--controllers="+strings.Join(controllers, ","),
		"--service-account-private-key-file="+c.pki.saKeyFile,
		"--root-ca-file="+c.pki.caFile,
		"--use-service-account-credentials=false",
		"--leader-elect=false",
		"--kube-api-qps=100",
		"--kube-api-burst=200",
	)
	if err != nil {
		return err
	}
	c.kcm = p
	// The serviceaccount controller creates "default" in every namespace: once it
	// exists in "default", the controllers run.
	return p.waitUntil("running", kcmTimeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := c.Clientset.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	})
}

// StopAPIServer stops kube-apiserver (SIGTERM, then SIGKILL after a grace
// period) and leaves etcd and the controller manager running.
func (c *Cluster) StopAPIServer(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apisrv == nil {
		return
	}
	t0 := time.Now()
	c.apisrv.stop()
	c.apisrv = nil
	t.Logf("kubetest: kube-apiserver stopped in %v", time.Since(t0).Round(time.Millisecond))
}

// StartAPIServer starts kube-apiserver again, on the same port and etcd, and
// waits until it is ready. Clients reconnect on their own.
func (c *Cluster) StartAPIServer(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apisrv != nil {
		t.Fatal("kubetest: kube-apiserver is already running")
	}
	t0 := time.Now()
	if err := c.startAPIServer(); err != nil {
		t.Fatalf("kubetest: restarting kube-apiserver: %v", err)
	}
	t.Logf("kubetest: kube-apiserver ready again in %v", time.Since(t0).Round(time.Millisecond))
}

// RestartAPIServer stops kube-apiserver and starts it again on the same port
// and etcd, so that watch reconnection can be tested.
func (c *Cluster) RestartAPIServer(t testing.TB) {
	t.Helper()
	c.StopAPIServer(t)
	c.StartAPIServer(t)
}

// Stop stops every process of the cluster (SIGTERM to its process group,
// SIGKILL 10s later) and removes its directory (kept if MESHD_KUBE_KEEP=1). It
// is safe to call more than once.
func (c *Cluster) Stop() { c.stop(false) }

// stop stops the processes; keepLogs keeps the directory (less etcd's data) to
// look at after a failure.
func (c *Cluster) stop(keepLogs bool) {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		for _, p := range []*process{c.kcm, c.apisrv, c.etcd} {
			if p != nil {
				p.stop()
			}
		}
		c.mu.Unlock()
		if os.Getenv(EnvKeep) == "1" {
			fmt.Fprintf(os.Stderr, "kubetest: kept %s\n", c.Dir)
			return
		}
		if keepLogs {
			// The next cluster started after this test binary exits removes it.
			os.RemoveAll(filepath.Join(c.Dir, "etcd"))
			fmt.Fprintf(os.Stderr, "kubetest: logs of the failed run kept in %s\n", c.Dir)
			return
		}
		os.RemoveAll(c.Dir)
	})
}

// Logs returns the last n lines that the named process ("etcd",
// "kube-apiserver", "kube-controller-manager") logged, to report on failure.
func (c *Cluster) Logs(name string, n int) string {
	return tail(filepath.Join(c.Dir, name+".log"), n)
}

// binaries are the paths of the programs a cluster runs.
type binaries struct {
	etcd, apiserver, controllerManager string
}

// BinDir returns where the binaries are looked for: $MESHD_KUBE_BIN_DIR, else
// $MESHD_CACHE/kube/<version>/bin with the kubernetes version that
// hack/kube-tools/go.mod names.
func BinDir() (string, error) {
	if d := os.Getenv(EnvBinDir); d != "" {
		return d, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	gomod := filepath.Join(root, "hack", "kube-tools", "go.mod")
	version, err := requiredVersion(gomod, "k8s.io/kubernetes")
	if err != nil {
		return "", err
	}
	cache := os.Getenv(EnvCache)
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(home, ".cache", "meshd")
	}
	return filepath.Join(cache, "kube", version, "bin"), nil
}

func findBinaries() (binaries, error) {
	dir, err := BinDir()
	if err != nil {
		return binaries{}, err
	}
	b := binaries{
		etcd:              filepath.Join(dir, "etcd"),
		apiserver:         filepath.Join(dir, "kube-apiserver"),
		controllerManager: filepath.Join(dir, "kube-controller-manager"),
	}
	for _, p := range []string{b.etcd, b.apiserver, b.controllerManager} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&0o111 == 0 {
			return b, fmt.Errorf("%w: no executable %s; %s", errNoBinaries, p, buildHint)
		}
	}
	return b, nil
}

// moduleRoot finds the main module's directory above the working directory
// (go test runs tests in their package's directory).
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if v, err := moduleLine(filepath.Join(dir, "go.mod")); err == nil && v == "github.com/meshd/meshd" {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("kubetest: no go.mod of github.com/meshd/meshd above %s", wd)
		}
	}
}

func moduleLine(gomod string) (string, error) {
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%s: no module line", gomod)
}

// requiredVersion reads the version of module from a go.mod's require lines.
func requiredVersion(gomod, module string) (string, error) {
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "require" { // require module version, on one line
			f = f[1:]
		}
		if len(f) >= 2 && f[0] == module && strings.HasPrefix(f[1], "v") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%s: no requirement on %s", gomod, module)
}

// process is a child process in its own process group, logging to DIR/NAME.log.
type process struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited
	err  error         // from Wait, once done is closed
}

func startProcess(dir, name, path string, args ...string) (*process, error) {
	p := &process{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own descriptor
	fmt.Fprintf(f, "### %s %s %s\n", time.Now().Format(time.RFC3339), path, strings.Join(args, " "))
	p.cmd = exec.Command(path, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = sysProcAttr()
	if err := spawn(p.cmd); err != nil {
		return nil, fmt.Errorf("kubetest: starting %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// spawner starts every child from one goroutine locked to its OS thread for the
// life of the test binary: Linux sends the parent-death signal when the thread
// that forked a child exits, not the process, and the Go runtime may end
// threads.
var spawner struct {
	once sync.Once
	reqs chan spawnRequest
}

type spawnRequest struct {
	cmd  *exec.Cmd
	errc chan error
}

func spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnRequest)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread lives as long as the process
			for r := range spawner.reqs {
				r.errc <- r.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	spawner.reqs <- spawnRequest{cmd, errc}
	return <-errc
}

// waitUntil polls ready every 100ms until it returns true, the process exits,
// or timeout passes.
func (p *process) waitUntil(what string, timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if ready() {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("kubetest: %s exited (%v) before it was %s; last lines of %s:\n%s",
				p.name, p.err, what, p.log, tail(p.log, 40))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kubetest: %s not %s after %v; last lines of %s:\n%s",
				p.name, what, timeout, p.log, tail(p.log, 40))
		}
	}
}

// stop sends SIGTERM to the process group, then SIGKILL if the process has
// not exited within the grace period, and waits for the exit.
func (p *process) stop() {
	pgid := p.cmd.Process.Pid // its own group: Setpgid
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// removeStaleDirs removes the directories of clusters whose test binary died
// without stopping them (a timeout or a crash): their processes died with it.
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "meshd-kubetest-*"))
	for _, dir := range dirs {
		data, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(dir)
		}
	}
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var lines []string
	s := bufio.NewScanner(bytes.NewReader(data))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Eventually calls cond every 100ms until it returns nil, and fails t with
// cond's last error if that has not happened within timeout.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %v: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
