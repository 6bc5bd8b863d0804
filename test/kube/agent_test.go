package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/test/kube/kubetest"
)

// TestAgentOnARealCluster runs the agent binary as a pod's istio-proxy container would, against meshd's secure
// port on a real API server: it authenticates with a TokenRequest token (audience istio-ca) over TLS verified
// against the mounted mesh root, gets its workload certificate from meshd's CA with a locally made key, writes
// the proxyless certificate files, proxies a real grpc-go xDS client's stream to the secure port, becomes ready
// once that client accepted its listener, and its port 15004 answers with this pod's sync status only.
func TestAgentOnARealCluster(t *testing.T) {
	s, podNS := agentCluster(t)
	pod := newPod(t, s, podNS)
	status, debug := freeTCPPort(t), freeTCPPort(t)
	startAgent(t, pod, podNS, "10.250.0.7",
		fmt.Sprintf(`PROXY_CONFIG={"discoveryAddress": %q, "statusPort": %d}`, s.SecureGRPCListener.String(), status),
		"ISTIO_META_GENERATOR=grpc", "PROXY_XDS_DEBUG_VIA_AGENT_PORT="+fmt.Sprint(debug))

	// The certificate files: this pod's identity, issued by meshd's root, the key private to the agent.
	certDir := filepath.Join(pod, "var/lib/istio/data")
	eventually(t, 30*time.Second, "workload certificate files", func() bool {
		_, err := os.Stat(filepath.Join(certDir, "root-cert.pem"))
		return err == nil
	})
	chain, err := os.ReadFile(filepath.Join(certDir, "cert-chain.pem"))
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseLeaf(t, chain)
	if want := "spiffe://cluster.local/ns/" + podNS + "/sa/productpage"; len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Fatalf("certificate identities %v, want exactly %s", leaf.URIs, want)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.CA().Roots(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("workload certificate does not verify against meshd's root: %v", err)
	}
	if st, err := os.Stat(filepath.Join(certDir, "key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem: %v, mode %v; want 0600", err, st.Mode().Perm())
	}

	readyURL := fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", status)
	if code := getCode(readyURL); code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz/ready = %d before any workload asked for config, want 503", code)
	}

	// A real grpc-go xDS client, reading the bootstrap the agent wrote, through the agent to the secure port.
	bootstrapJSON, err := os.ReadFile(filepath.Join(pod, "etc/istio/proxy/grpc-bootstrap.json"))
	if err != nil {
		t.Fatal(err)
	}
	var bs struct {
		CertificateProviders map[string]any `json:"certificate_providers"`
	}
	if err := json.Unmarshal(bootstrapJSON, &bs); err != nil || bs.CertificateProviders["default"] == nil {
		t.Fatalf("the gRPC bootstrap has no default certificate provider (%v):\n%s", err, bootstrapJSON)
	}
	resolver, err := xds.NewXDSResolverWithConfigForTesting(bootstrapJSON)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///echo."+podNS+".svc.cluster.local:7070",
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	// No backend runs: the call only makes the client fetch its listener, route and cluster.
	_, _ = testgrpc.NewTestServiceClient(conn).UnaryCall(ctx, &testgrpc.SimpleRequest{})
	cancel()
	eventually(t, 30*time.Second, "agent ready once the client accepted its listener", func() bool { return getCode(readyURL) == http.StatusOK })

	// Port 15004 over the secure port: this pod's own sync status, no one else's.
	body := getBody(t, fmt.Sprintf("http://127.0.0.1:%d/debug/syncz", debug))
	if !strings.Contains(body, `"proxy": "productpage-v1.`+podNS+`"`) || !strings.Contains(body, `"lds": "SYNCED"`) {
		t.Fatalf("15004 /debug/syncz lacks this pod, synced:\n%s", body)
	}
	var entries []map[string]any
	if err := json.Unmarshal([]byte(body), &entries); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e["proxy"] != "productpage-v1."+podNS {
			t.Fatalf("15004 shows another proxy to a workload: %v", e["proxy"])
		}
	}
	if code := getCode(fmt.Sprintf("http://127.0.0.1:%d/debug/registryz", debug)); code != http.StatusForbidden {
		t.Fatalf("15004 /debug/registryz = %d for a workload, want 403", code)
	}
}

// agentNamespace holds the agent tests' workloads: ServiceAccount productpage and a Service echo (port 7070).
const agentNamespace = "agent-workloads"

// agentCluster prepares the shared cluster for agent tests and starts meshd on it with its secure port.
func agentCluster(t *testing.T) (*bootstrap.Server, string) {
	t.Helper()
	c := kubetest.Shared(t)
	cs := c.Clientset
	createNamespace(t, cs, "istio-system", nil)
	createNamespace(t, cs, agentNamespace, nil)
	if _, err := cs.CoreV1().ServiceAccounts(agentNamespace).Create(t.Context(), &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "productpage"}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services(agentNamespace).Create(t.Context(), &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 7070}}, Selector: map[string]string{"app": "echo"}},
	}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	s := newMeshdWith(t, c.Kubeconfig, "", func(a *bootstrap.Args) { a.SecureGRPCAddr = "127.0.0.1:0" })
	eventually(t, time.Minute, "meshd ready", func() bool { return ready(s) })
	return s, agentNamespace
}

// newPod is the root of productpage's istio-proxy container: its projected istio-ca token and the mounted
// mesh root, as Kubernetes and the injector provide them.
func newPod(t *testing.T, s *bootstrap.Server, podNS string) string {
	t.Helper()
	pod, err := os.MkdirTemp("", "pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(pod) })
	token := serviceAccountToken(t, kubetest.Shared(t).Clientset, podNS, "productpage", "istio-ca")
	writePodFile(t, pod, "var/run/secrets/tokens/istio-token", token)
	writePodFile(t, pod, "var/run/secrets/istio/root-cert.pem", string(s.CA().RootPEM()))
	return pod
}

// agentProcess is a running agent binary.
type agentProcess struct {
	cmd    *exec.Cmd
	exited chan error
}

// startAgent runs the agent for productpage-v1 in pod with the given IP and extra environment; the test's end
// stops it (SIGTERM) and, if the test failed, logs its output.
func startAgent(t *testing.T, pod, podNS, ip string, env ...string) *agentProcess {
	t.Helper()
	cmd := exec.Command(agentBinaries(t)["agent"], "proxy", "sidecar", "--domain", podNS+".svc.cluster.local")
	cmd.Dir = pod
	cmd.Env = append([]string{
		"POD_NAME=productpage-v1", "POD_NAMESPACE=" + podNS, "INSTANCE_IP=" + ip, "SERVICE_ACCOUNT=productpage",
		"ISTIOD_SAN=istiod.istio-system.svc",
	}, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agentProcess{cmd: cmd, exited: make(chan error, 1)}
	go func() { a.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-a.exited:
			a.exited <- err
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("agent output:\n%s", out.String())
		}
	})
	return a
}

var (
	agentBinsOnce sync.Once
	agentBins     map[string]string
	agentBinsErr  error
)

// agentBinaries builds the agent and the proxy double once per test binary (into a directory TestMain removes).
func agentBinaries(t *testing.T) map[string]string {
	t.Helper()
	agentBinsOnce.Do(func() {
		dir := filepath.Join(binDir, "agent-bins")
		agentBins = map[string]string{}
		for name, pkg := range map[string]string{"agent": "../../cmd/agent", "proxydouble": "../proxydouble"} {
			bin := filepath.Join(dir, name)
			if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
				agentBinsErr = fmt.Errorf("building %s: %v\n%s", pkg, err, out)
				return
			}
			agentBins[name] = bin
		}
	})
	if agentBinsErr != nil {
		t.Fatal(agentBinsErr)
	}
	return agentBins
}

func writePodFile(t *testing.T, pod, rel, content string) {
	t.Helper()
	path := filepath.Join(pod, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func parseLeaf(t *testing.T, chainPEM []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(chainPEM)
	if block == nil {
		t.Fatalf("no PEM certificate in the chain file:\n%s", chainPEM)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func getCode(url string) int {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	code, body := get(t, url)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, code, body)
	}
	return body
}

// TestSidecarAgentOnARealCluster is the Envoy path of the same pod: the agent runs the proxy double as Envoy,
// whose ADS stream reaches meshd's secure port through the agent with the pod's token; the pod becomes ready
// once the proxy accepted its config; and the agent's SDS socket serves, as Envoy would ask for them, the
// workload certificate for this pod's identity (its key matching, made in the agent) and meshd's root.
func TestSidecarAgentOnARealCluster(t *testing.T) {
	s, podNS := agentCluster(t)
	pod := newPod(t, s, podNS)
	status, admin := freeTCPPort(t), freeTCPPort(t)
	agent := startAgent(t, pod, podNS, "10.250.0.8",
		fmt.Sprintf(`PROXY_CONFIG={"discoveryAddress": %q, "statusPort": %d, "proxyAdminPort": %d, "binaryPath": %q}`,
			s.SecureGRPCListener.String(), status, admin, agentBinaries(t)["proxydouble"]),
		"PROXY_XDS_DEBUG_VIA_AGENT=false", "TERMINATION_DRAIN_DURATION_SECONDS=0",
		// test/agent runs doubles on the bootstrap's fixed 15090 and 15021, maybe at the same time.
		"PROXYDOUBLE_NO_STATIC_LISTENERS=true")
	eventually(t, 30*time.Second, "pod ready once the proxy accepted its config over the secure port", func() bool {
		return getCode(fmt.Sprintf("http://127.0.0.1:%d/healthz/ready", status)) == http.StatusOK
	})

	conn, err := grpc.NewClient("unix://"+filepath.Join(pod, "var/run/secrets/workload-spiffe-uds/socket"),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &corev3.Node{Id: "sidecar~10.250.0.8~productpage-v1." + podNS + "~" + podNS + ".svc.cluster.local"},
		TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", ResourceNames: []string{"default", "ROOTCA"}}); err != nil {
		t.Fatal(err)
	}
	secrets := map[string]*tlsv3.Secret{}
	for len(secrets) < 2 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("SDS: %v", err)
		}
		for _, a := range resp.Resources {
			var sec tlsv3.Secret
			if err := a.UnmarshalTo(&sec); err != nil {
				t.Fatal(err)
			}
			secrets[sec.Name] = &sec
		}
	}
	tc := secrets["default"].GetTlsCertificate()
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("SDS default: the key does not match the certificate: %v", err)
	}
	if want := "spiffe://cluster.local/ns/" + podNS + "/sa/productpage"; len(pair.Leaf.URIs) != 1 || pair.Leaf.URIs[0].String() != want {
		t.Fatalf("SDS default is for %v, want exactly %s", pair.Leaf.URIs, want)
	}
	root := secrets["ROOTCA"].GetValidationContext().GetTrustedCa().GetInlineBytes()
	if !bytes.Equal(bytes.TrimSpace(root), bytes.TrimSpace(s.CA().RootPEM())) {
		t.Fatalf("SDS ROOTCA is not meshd's root:\n%s", root)
	}
	if fi, err := os.Stat(filepath.Join(pod, "var/run/secrets/workload-spiffe-uds/socket")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("SDS socket: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}

	_ = agent.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-agent.exited:
		agent.exited <- err
		if err != nil {
			t.Fatalf("agent exited with %v after SIGTERM, want status 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("agent did not exit within 20s of SIGTERM")
	}
}
