// Package agent runs meshd's sidecar agent, the counterpart of Istio's pilot-agent: it writes the proxy's
// bootstrap, proxies its xDS stream to the control plane, provisions its certificates over SDS (or as files for
// proxyless gRPC), serves health and merged metrics on the status port, optionally answers DNS from the mesh's
// name table, and supervises the proxy process.
package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshd/meshd/pkg/agent/bootstrap"
	"github.com/meshd/meshd/pkg/agent/caclient"
	"github.com/meshd/meshd/pkg/agent/config"
	"github.com/meshd/meshd/pkg/agent/debugtap"
	"github.com/meshd/meshd/pkg/agent/dns"
	"github.com/meshd/meshd/pkg/agent/proxy"
	"github.com/meshd/meshd/pkg/agent/sds"
	"github.com/meshd/meshd/pkg/agent/secrets"
	"github.com/meshd/meshd/pkg/agent/status"
	"github.com/meshd/meshd/pkg/agent/xdsproxy"
	"github.com/meshd/meshd/pkg/model"
)

// Paths of the files Kubernetes mounts into the istio-proxy container, relative to the agent's working
// directory (/ in a pod).
const (
	// RootCertPath is the mesh root the istio-ca-root-cert ConfigMap is mounted at: the control plane's
	// serving certificate is verified against it.
	RootCertPath = "./var/run/secrets/istio/root-cert.pem"
	// ThirdPartyTokenPath is the projected service account token with audience istio-ca (JWT_POLICY third-party-jwt).
	ThirdPartyTokenPath = "./var/run/secrets/tokens/istio-token"
	// FirstPartyTokenPath is the legacy service account token (JWT_POLICY first-party-jwt).
	FirstPartyTokenPath = "./var/run/secrets/kubernetes.io/serviceaccount/token"

	// CertProviderNone turns workload certificates off (PILOT_CERT_PROVIDER=none).
	CertProviderNone = "none"

	defaultDebugPort = 15004
)

// Options are the agent's settings beyond config.Config: the variables only the supervisor reads.
type Options struct {
	Config *config.Config
	// Getenv reads the environment (TERMINATION_DRAIN_DURATION_SECONDS, ISTIO_KUBE_APP_PROBERS,
	// ISTIO_PROMETHEUS_ANNOTATIONS, ISTIO_META_DNS_CAPTURE, XDS_ROOT_CA, ...).
	Getenv func(string) string
	// Environ is passed to the proxy process.
	Environ []string
	Logger  *slog.Logger
}

// Agent is one running agent. Run it once.
type Agent struct {
	cfg    *config.Config
	getenv func(string) string
	env    []string
	log    *slog.Logger

	metrics  *prometheus.Registry
	xds      *xdsproxy.Proxy
	secrets  *secrets.Manager
	dns      *dns.Server
	proxy    *proxy.Proxy
	caClient *caclient.Client

	// plaintext is XDS_PLAINTEXT: the control plane is reached without TLS whatever its port.
	plaintext bool

	quitOnce sync.Once
	quit     chan struct{}
}

// New checks the settings and resolves the agent's paths; nothing listens before Run.
func New(opts Options) (*Agent, error) {
	if opts.Config == nil {
		return nil, errors.New("agent: no config")
	}
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	cfg := opts.Config
	// Absolute socket and certificate paths: the proxyless bootstrap is read by an application whose working
	// directory is not the agent's.
	for _, p := range []*string{&cfg.XDSSocket, &cfg.SDSSocket, &cfg.OutputCerts} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return nil, fmt.Errorf("agent: %s: %w", *p, err)
		}
		*p = abs
	}
	switch {
	case cfg.PilotCertProvider == CertProviderNone:
		cfg.OutputCerts = ""
	case !cfg.Proxyless() && opts.Getenv("OUTPUT_CERTS") == "":
		// Envoy gets its certificates over SDS; files only when asked for.
		cfg.OutputCerts = ""
	}
	a := &Agent{cfg: cfg, getenv: opts.Getenv, env: opts.Environ, log: opts.Logger, quit: make(chan struct{})}
	if v := opts.Getenv("XDS_PLAINTEXT"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("XDS_PLAINTEXT %q: %w", v, err)
		}
		a.plaintext = b
	}
	a.metrics = prometheus.NewRegistry()
	a.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return a, nil
}

// Run starts everything, then waits. It returns nil after a clean shutdown (ctx cancelled, i.e. SIGTERM, or
// /quitquitquit): the proxy was drained for the termination drain duration and stopped. When the proxy exits
// on its own, Run returns its *proxy.ExitError (or nil for status 0), so the agent exits as the proxy did.
func (a *Agent) Run(ctx context.Context) error {
	runCtx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	errc := make(chan error, 8)
	serve := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(runCtx); err != nil && runCtx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}

	if err := a.startCertificates(serve); err != nil {
		return err
	}
	if err := a.startXDSProxy(serve); err != nil {
		return err
	}
	if err := a.startDNS(serve); err != nil {
		return err
	}
	if err := a.startDebugForwarder(serve); err != nil {
		return err
	}
	st, err := a.newStatusServer()
	if err != nil {
		return err
	}
	serve("status server", st.Serve)
	a.log.Info("agent started", "node", a.cfg.NodeID, "discovery", a.cfg.ProxyConfig.GetDiscoveryAddress(),
		"status", st.Addr().String(), "proxyless", a.cfg.Proxyless())

	proxyDone := make(chan error, 1)
	if a.cfg.Proxyless() {
		if err := a.writeGRPCBootstrap(); err != nil {
			return err
		}
	} else {
		if err := a.writeEnvoyBootstrap(); err != nil {
			return err
		}
		a.proxy = proxy.New(proxy.Options{
			Binary:           a.cfg.ProxyConfig.GetBinaryPath(),
			Args:             bootstrap.EnvoyArgs(a.cfg),
			Env:              a.env,
			AdminAddr:        a.adminAddr(),
			TerminationDrain: a.terminationDrain(),
			Logger:           a.log,
		})
		go func() { proxyDone <- a.proxy.Run(runCtx) }()
	}

	select {
	case err := <-proxyDone:
		// The proxy exited on its own: the agent follows it, with its status.
		a.log.Info("proxy exited", "error", err)
		return err
	case err := <-errc:
		return err
	case <-ctx.Done():
		a.log.Info("terminating")
	case <-a.quit:
		a.log.Info("terminating: /quitquitquit")
	}
	if a.proxy != nil {
		a.log.Info("draining the proxy", "drain", a.terminationDrain())
		dctx, dcancel := context.WithTimeout(context.Background(), a.terminationDrain()+30*time.Second)
		defer dcancel()
		if err := a.proxy.Drain(dctx); err != nil {
			a.log.Warn("draining the proxy", "error", err)
		}
		// Drain stops the proxy; if it could not (the proxy was still starting), stopping Run's context does.
		cancel()
		<-proxyDone
	}
	return nil
}

func (a *Agent) terminationDrain() time.Duration {
	if v := a.getenv("TERMINATION_DRAIN_DURATION_SECONDS"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			return time.Duration(n) * time.Second
		}
		a.log.Warn("TERMINATION_DRAIN_DURATION_SECONDS is not a number of seconds; using the default", "value", v)
	}
	return proxy.DefaultTerminationDrain
}

func (a *Agent) adminAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(a.cfg.ProxyConfig.GetProxyAdminPort())))
}

// upstreamCredentials are the dial options for the control plane and the CA. xDS goes in plaintext to a
// :15010 address, as Istio's agent does (or anywhere with XDS_PLAINTEXT=true, for control planes on other
// ports); the CA is always reached over TLS. TLS is verified against the mesh root, with the service account
// token on every call and the workload certificate, once there is one, as the client certificate.
func (a *Agent) upstreamCredentials(addr string, xds bool) ([]grpc.DialOption, error) {
	if xds && (strings.HasSuffix(addr, ":15010") || a.plaintext) {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("control plane address %q: %w", addr, err)
	}
	rootPath := a.getenv("XDS_ROOT_CA")
	if rootPath == "" {
		rootPath = RootCertPath
	}
	serverName := host
	if san := a.getenv("ISTIOD_SAN"); san != "" {
		serverName = san
	}
	tlsConfig, err := caclient.RootTLSConfig(rootPath, serverName)
	if err != nil {
		return nil, fmt.Errorf("%w (XDS_ROOT_CA or the istio-ca-root-cert mount)", err)
	}
	tlsConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return a.clientCertificate(), nil
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig))}
	if token := a.tokenPath(); token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(caclient.TokenCredentials(token)))
	}
	return opts, nil
}

// tokenPath is the service account token the agent authenticates with, per JWT_POLICY; "" when it is absent
// (the workload certificate then is the only credential).
func (a *Agent) tokenPath() string {
	path := ThirdPartyTokenPath
	if a.cfg.JWTPolicy == "first-party-jwt" {
		path = FirstPartyTokenPath
	}
	if _, err := os.Stat(path); err != nil {
		return ""
	}
	return path
}

// clientCertificate is the current workload certificate, or an empty one (no certificate sent) before the
// first is issued.
func (a *Agent) clientCertificate() *tls.Certificate {
	if a.secrets == nil {
		return &tls.Certificate{}
	}
	item := a.secrets.Current()
	if item == nil {
		return &tls.Certificate{}
	}
	cert, err := tls.X509KeyPair(item.CertChainPEM, item.PrivateKeyPEM)
	if err != nil {
		return &tls.Certificate{}
	}
	return &cert
}

// caAddr is CA_ADDR, else the discovery address; a plaintext discovery address (:15010) means the CA on the
// same host's secure port, where meshd serves it.
func (a *Agent) caAddr() string {
	addr := a.cfg.CAAddr
	if addr == "" {
		addr = a.cfg.ProxyConfig.GetDiscoveryAddress()
	}
	if host, ok := strings.CutSuffix(addr, ":15010"); ok {
		addr = host + ":15012"
	}
	return addr
}

func (a *Agent) startCertificates(serve func(string, func(context.Context) error)) error {
	if a.cfg.PilotCertProvider == CertProviderNone {
		a.log.Info("PILOT_CERT_PROVIDER=none: no workload certificates")
		return nil
	}
	addr := a.caAddr()
	dialOpts, err := a.upstreamCredentials(addr, false)
	if err != nil {
		return fmt.Errorf("CA %s: %w", addr, err)
	}
	if a.caClient, err = caclient.New(caclient.Options{Addr: addr, DialOptions: dialOpts, ClusterID: a.cfg.ClusterID, Logger: a.log}); err != nil {
		return fmt.Errorf("CA client: %w", err)
	}
	ttl := time.Duration(0)
	if v := a.getenv("SECRET_TTL"); v != "" {
		if ttl, err = time.ParseDuration(v); err != nil {
			return fmt.Errorf("SECRET_TTL %q: %w", v, err)
		}
	}
	grace := 0.0
	if v := a.getenv("SECRET_GRACE_PERIOD_RATIO"); v != "" {
		if grace, err = strconv.ParseFloat(v, 64); err != nil || grace <= 0 || grace >= 1 {
			return fmt.Errorf("SECRET_GRACE_PERIOD_RATIO %q: want a number between 0 and 1", v)
		}
	}
	if a.secrets, err = secrets.NewManager(secrets.Options{
		Signer:         a.caClient,
		TrustDomain:    a.cfg.TrustDomain,
		Namespace:      a.cfg.PodNamespace,
		ServiceAccount: a.cfg.ServiceAccount,
		TTL:            ttl,
		GraceRatio:     grace,
		// ECDSA P-256 whatever ECC_SIGNATURE_ALGORITHM says: smaller and faster than Istio's RSA default,
		// and accepted by every Envoy and grpc-go.
		KeyType:   "EC",
		OutputDir: a.cfg.OutputCerts,
		Logger:    a.log,
	}); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	a.registerCertMetrics()
	// Run fetches the first certificate at once (proxyless gRPC reads files and never asks), retrying while
	// the CA is unreachable, then renews it.
	serve("certificates", func(ctx context.Context) error { a.secrets.Run(ctx); return nil })
	if a.cfg.Proxyless() {
		return nil
	}
	srv, err := sds.New(sds.Options{Socket: a.cfg.SDSSocket, Secrets: a.secrets, Logger: a.log})
	if err != nil {
		return fmt.Errorf("SDS: %w", err)
	}
	serve("SDS server", srv.Serve)
	return nil
}

func (a *Agent) registerCertMetrics() {
	a.metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "istio_agent_cert_expiry_seconds",
		Help: "Seconds until the workload certificate expires (negative once expired; 0 before the first is issued).",
	}, func() float64 {
		if item := a.secrets.Current(); item != nil {
			return time.Until(item.NotAfter).Seconds()
		}
		return 0
	}))
}

func (a *Agent) startXDSProxy(serve func(string, func(context.Context) error)) error {
	addr := a.cfg.ProxyConfig.GetDiscoveryAddress()
	dialOpts, err := a.upstreamCredentials(addr, true)
	if err != nil {
		return fmt.Errorf("control plane %s: %w", addr, err)
	}
	if a.xds, err = xdsproxy.New(xdsproxy.Options{Socket: a.cfg.XDSSocket, Upstream: addr, DialOptions: dialOpts, Logger: a.log}); err != nil {
		return fmt.Errorf("XDS proxy: %w", err)
	}
	a.metrics.MustRegister(xdsProxyCollector{a.xds})
	serve("XDS proxy", a.xds.Serve)
	return nil
}

// ready is the agent's side of readiness: the proxy has accepted its first listeners and clusters (a
// proxyless server or client asks for listeners first; clusters come later or never), and proxyless
// certificate files are written.
func (a *Agent) ready() error {
	want := []string{model.ClusterType, model.ListenerType}
	if a.cfg.Proxyless() {
		want = []string{model.ListenerType}
	}
	for _, t := range want {
		if !a.xds.Acked(t) {
			return fmt.Errorf("no %s accepted by the proxy yet", strings.ToUpper(model.ShortType(t)))
		}
	}
	if a.cfg.OutputCerts != "" && a.secrets != nil && a.secrets.Current() == nil {
		return errors.New("no workload certificate yet")
	}
	return nil
}

func (a *Agent) newStatusServer() (*status.Server, error) {
	opts := status.Options{
		Addr:         net.JoinHostPort("", strconv.Itoa(int(a.cfg.ProxyConfig.GetStatusPort()))),
		Ready:        a.ready,
		AppProbes:    a.getenv("ISTIO_KUBE_APP_PROBERS"),
		AppMetrics:   a.getenv("ISTIO_PROMETHEUS_ANNOTATIONS"),
		AgentMetrics: a.metrics,
		OnQuit:       a.Quit,
		Logger:       a.log,
	}
	if !a.cfg.Proxyless() {
		opts.AdminAddr = a.adminAddr()
		opts.PrometheusAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(bootstrap.EnvoyPromPort))
	}
	if a.dns != nil {
		opts.NDSZ = func() any { return a.dns.Table() }
	}
	return status.New(opts)
}

// Quit starts the same shutdown as SIGTERM (the status server's /quitquitquit).
func (a *Agent) Quit() { a.quitOnce.Do(func() { close(a.quit) }) }

func (a *Agent) startDNS(serve func(string, func(context.Context) error)) error {
	if v, _ := strconv.ParseBool(a.cfg.Metadata["DNS_CAPTURE"]); !v {
		return nil
	}
	addr := cmp.Or(a.getenv("DNS_PROXY_ADDR"), dns.DefaultAddr) // Istio's variable
	s, err := dns.New(dns.Options{Addr: addr, SearchDomains: searchDomains(a.cfg), Logger: a.log})
	if err != nil {
		return fmt.Errorf("DNS proxy: %w", err)
	}
	if err := s.Start(); err != nil {
		return fmt.Errorf("DNS proxy on %s: %w", addr, err)
	}
	a.dns = s
	node, err := bootstrap.Node(a.cfg)
	if err != nil {
		return err
	}
	serve("DNS proxy", func(ctx context.Context) error {
		go dns.Watch(ctx, a.xds.Conn(), node, s, a.log)
		<-ctx.Done()
		return s.Close()
	})
	return nil
}

// startDebugForwarder serves port 15004 (PROXY_XDS_DEBUG_VIA_AGENT, PROXY_XDS_DEBUG_VIA_AGENT_PORT) on
// localhost only: it answers with the control plane's view of this proxy.
func (a *Agent) startDebugForwarder(serve func(string, func(context.Context) error)) error {
	if v := a.getenv("PROXY_XDS_DEBUG_VIA_AGENT"); v != "" {
		if on, err := strconv.ParseBool(v); err != nil {
			return fmt.Errorf("PROXY_XDS_DEBUG_VIA_AGENT %q: %w", v, err)
		} else if !on {
			return nil
		}
	}
	port := defaultDebugPort
	if v := a.getenv("PROXY_XDS_DEBUG_VIA_AGENT_PORT"); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p <= 0 || p > 65535 {
			return fmt.Errorf("PROXY_XDS_DEBUG_VIA_AGENT_PORT %q: not a port", v)
		}
		port = p
	}
	node, err := bootstrap.Node(a.cfg)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("debug port (PROXY_XDS_DEBUG_VIA_AGENT_PORT): %w", err)
	}
	srv := &http.Server{Handler: debugtap.Handler(a.xds.Conn(), node, 15*time.Second), ReadHeaderTimeout: 10 * time.Second}
	serve("debug forwarder", func(ctx context.Context) error {
		go func() { <-ctx.Done(); _ = srv.Close() }()
		if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return nil
}

// searchDomains are a pod's resolv.conf search domains, which stub resolvers append before asking.
func searchDomains(cfg *config.Config) []string {
	suffix := strings.TrimPrefix(cfg.DNSDomain, cfg.PodNamespace+".")
	domains := []string{cfg.DNSDomain}
	if suffix != cfg.DNSDomain {
		domains = append(domains, suffix)
		if s := strings.TrimPrefix(suffix, "svc."); s != suffix {
			domains = append(domains, s)
		}
	}
	return domains
}

func (a *Agent) writeEnvoyBootstrap() error {
	data, err := bootstrap.Envoy(a.cfg)
	if err != nil {
		return fmt.Errorf("envoy bootstrap: %w", err)
	}
	return writeFile(a.cfg.BootstrapPath(), data)
}

func (a *Agent) writeGRPCBootstrap() error {
	data, err := bootstrap.GRPC(a.cfg)
	if err != nil {
		return fmt.Errorf("gRPC bootstrap: %w", err)
	}
	return writeFile(a.cfg.GRPCBootstrapPath(), data)
}

// writeFile replaces path atomically, so that a reader never sees half a bootstrap.
func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return nil
}
