package status

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// appProbePrefix is where the injector rewrites the app's probes to; keys elsewhere could shadow the status
// server's own endpoints.
const appProbePrefix = "/app-health/"

// appProbe is one ISTIO_KUBE_APP_PROBERS entry: the container's original probe handler and timeout.
type appProbe struct {
	HTTPGet        *corev1.HTTPGetAction   `json:"httpGet,omitempty"`
	TCPSocket      *corev1.TCPSocketAction `json:"tcpSocket,omitempty"`
	GRPC           *corev1.GRPCAction      `json:"grpc,omitempty"`
	TimeoutSeconds int32                   `json:"timeoutSeconds,omitempty"`

	port int
}

func parseProbes(raw string) (map[string]*appProbe, error) {
	probes := map[string]*appProbe{}
	if strings.TrimSpace(raw) == "" {
		return probes, nil
	}
	if err := json.Unmarshal([]byte(raw), &probes); err != nil {
		return nil, fmt.Errorf("ISTIO_KUBE_APP_PROBERS: %w", err)
	}
	for path, p := range probes {
		if err := p.validate(path); err != nil {
			return nil, fmt.Errorf("ISTIO_KUBE_APP_PROBERS %s: %w", path, err)
		}
	}
	return probes, nil
}

func (p *appProbe) validate(path string) error {
	if !strings.HasPrefix(path, appProbePrefix) {
		return fmt.Errorf("path must start with %s", appProbePrefix)
	}
	if p == nil {
		return fmt.Errorf("no probe")
	}
	handlers := 0
	var port intstr.IntOrString
	if p.HTTPGet != nil {
		handlers++
		port = p.HTTPGet.Port
		if s := strings.ToUpper(string(p.HTTPGet.Scheme)); s != "" && s != "HTTP" && s != "HTTPS" {
			return fmt.Errorf("scheme %q", p.HTTPGet.Scheme)
		}
	}
	if p.TCPSocket != nil {
		handlers++
		port = p.TCPSocket.Port
	}
	if p.GRPC != nil {
		handlers++
		port = intstr.FromInt32(p.GRPC.Port)
	}
	if handlers != 1 {
		return fmt.Errorf("want exactly one of httpGet, tcpSocket and grpc, have %d", handlers)
	}
	// The injector resolves named ports; a name left here cannot be resolved from inside the pod.
	n, err := strconv.Atoi(port.String())
	if err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("port %q is not a port number", port.String())
	}
	p.port = n
	return nil
}

// timeout is the probe's timeoutSeconds, which Kubernetes defaults to 1.
func (p *appProbe) timeout() time.Duration {
	if p.TimeoutSeconds <= 0 {
		return time.Second
	}
	return time.Duration(p.TimeoutSeconds) * time.Second
}

func (p *appProbe) target() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// Keep-alives are off as in the kubelet: each probe opens a fresh connection, as a new client of the app would,
// and no idle connections to the app linger in the agent.
var (
	probeHTTP = &http.Client{
		Transport:     &http.Transport{DisableKeepAlives: true},
		CheckRedirect: noRedirects,
	}
	// The kubelet does not verify app certificates either: probes check liveness, not identity.
	probeHTTPS = &http.Client{
		Transport: &http.Transport{
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as the kubelet does
		},
		CheckRedirect: noRedirects,
	}
)

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func (s *Server) handleAppProbe(w http.ResponseWriter, r *http.Request) {
	p, ok := s.probes[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), p.timeout())
	defer cancel()
	var code int
	var err error
	switch {
	case p.HTTPGet != nil:
		code, err = p.httpGet(ctx, r)
	case p.TCPSocket != nil:
		code, err = p.tcpSocket(ctx)
	default:
		code, err = p.grpcHealth(ctx)
	}
	if err != nil {
		s.log.Debug("app probe failed", "path", r.URL.Path, "err", err)
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(code)
}

// httpGet returns the app's status code, as pilot-agent does, except that a redirect becomes 200: the kubelet
// counts 3xx as success, and relaying it would send the kubelet to a path on the status port.
func (p *appProbe) httpGet(ctx context.Context, in *http.Request) (int, error) {
	u, err := url.Parse(p.HTTPGet.Path)
	if err != nil {
		return 0, fmt.Errorf("probe path %q: %w", p.HTTPGet.Path, err)
	}
	u.Scheme, u.Host = "http", p.target()
	client := probeHTTP
	if strings.EqualFold(string(p.HTTPGet.Scheme), "HTTPS") {
		u.Scheme, client = "https", probeHTTPS
	}
	if u.Path == "" {
		u.Path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, fmt.Errorf("probe request: %w", err)
	}
	// The kubelet's User-Agent (kube-probe/x.y) lets apps recognise probes, unless the probe sets its own.
	req.Header.Set("User-Agent", in.UserAgent())
	for _, h := range p.HTTPGet.HTTPHeaders {
		if strings.EqualFold(h.Name, "Host") {
			req.Host = h.Value
			continue
		}
		req.Header.Add(h.Name, h.Value)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("app probe: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return http.StatusOK, nil
	}
	return resp.StatusCode, nil
}

func (p *appProbe) tcpSocket(ctx context.Context) (int, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.target())
	if err != nil {
		return 0, fmt.Errorf("app probe: %w", err)
	}
	conn.Close()
	return http.StatusOK, nil
}

func (p *appProbe) grpcHealth(ctx context.Context) (int, error) {
	conn, err := grpc.NewClient(p.target(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, fmt.Errorf("app probe: %w", err)
	}
	defer conn.Close()
	service := ""
	if p.GRPC.Service != nil {
		service = *p.GRPC.Service
	}
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		return 0, fmt.Errorf("app probe: grpc health check: %w", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return 0, fmt.Errorf("app probe: grpc service %q is %s", service, resp.GetStatus())
	}
	return http.StatusOK, nil
}
