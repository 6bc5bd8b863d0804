package security_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	sec "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/clusters"
	"github.com/meshd/meshd/pkg/networking/listeners"
	"github.com/meshd/meshd/pkg/networking/routes"
	"github.com/meshd/meshd/pkg/networking/util"
	meshxds "github.com/meshd/meshd/pkg/xds"
)

// testCA issues SPIFFE certificates from a throwaway root, written as grpc-go's file_watcher provider reads them.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{key: key, cert: cert, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes cert.pem, key.pem and root.pem for a SPIFFE identity into a new directory.
func (ca *testCA) issue(t *testing.T, spiffeID string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, b := range map[string][]byte{
		"cert.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		"root.pem": ca.pem,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// grpcBootstrap is a proxyless bootstrap as Istio's agent writes it: the ADS server, the node (with the pod's
// labels, tlsMode istio among them), the certificate provider "default" (file_watcher over the agent's certificate
// files) and the server listener name template.
func grpcBootstrap(xdsAddr, nodeID, certDir string) []byte {
	return []byte(fmt.Sprintf(`{
	  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
	  "node": {"id": %q, "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default",
	           "LABELS": {"security.istio.io/tlsMode": "istio"}}},
	  "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
	    "certificate_file": %q, "private_key_file": %q, "ca_certificate_file": %q, "refresh_interval": "600s"}}},
	  "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%%s"
	}`, xdsAddr, nodeID, filepath.Join(certDir, "cert.pem"), filepath.Join(certDir, "key.pem"), filepath.Join(certDir, "root.pem")))
}

// mutableStore is a config store a test can change, followed by a full push.
type mutableStore struct {
	mu      sync.Mutex
	configs []*model.Config
}

func (s *mutableStore) List(kind model.Kind) []*model.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*model.Config
	for _, c := range s.configs {
		if c.Kind == kind {
			out = append(out, c)
		}
	}
	return out
}

func (s *mutableStore) set(cs ...*model.Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.configs = cs
}

type echoServer struct {
	testgrpc.UnimplementedTestServiceServer
}

// UnaryCall answers with the client's SPIFFE identity as seen on the mTLS connection ("" for plaintext).
func (echoServer) UnaryCall(ctx context.Context, _ *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	id := ""
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 && len(ti.State.PeerCertificates[0].URIs) > 0 {
			id = ti.State.PeerCertificates[0].URIs[0].String()
		}
	}
	return &testgrpc.SimpleResponse{Username: id}, nil
}

// Proxyless gRPC end to end on the config meshd generates: a grpc-go xDS client and an xDS server, both mesh
// workloads with certificates from the bootstrap's certificate provider, talk mTLS (auto-mTLS on the client's
// cluster, PERMISSIVE turned mTLS on the server's listener); the server sees the client's SPIFFE identity; a
// client without a mesh certificate is refused; an AuthorizationPolicy denies the client once applied. This
// proves grpc-go accepts every security field we send (it NACKs what it does not understand).
func TestProxylessGRPCMutualTLS(t *testing.T) {
	ca := newTestCA(t)
	serverID, clientID := "spiffe://cluster.local/ns/default/sa/echo", "spiffe://cluster.local/ns/default/sa/client"

	lis, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 loopback: %v", err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	svc := &model.Service{Hostname: "echo.default.svc.cluster.local", Name: "echo", Namespace: "default", Addresses: []string{"10.96.0.7"},
		Ports: []*model.Port{{Name: "grpc", Port: port, Protocol: model.ProtocolGRPC}}, Selector: map[string]string{"app": "echo"}}
	workloads := []*model.Workload{
		{Name: "echo-1", Namespace: "default", IP: "127.0.0.2", Labels: map[string]string{"app": "echo"}, ServiceAccount: "echo",
			Ready: true, TLSMode: model.TLSModeIstio, Kind: "Pod"},
		{Name: "client", Namespace: "default", IP: "127.0.0.5", Labels: map[string]string{"app": "client"}, ServiceAccount: "client",
			Ready: true, TLSMode: model.TLSModeIstio, Kind: "Pod"},
	}
	eps := []*model.Endpoint{{Hostname: svc.Hostname, ServicePort: port, Address: "127.0.0.2", Port: port, Labels: workloads[0].Labels,
		ServiceAccount: "echo", Namespace: "default", WorkloadName: "echo-1", TLSMode: model.TLSModeIstio}}
	store := &mutableStore{}
	env := &model.Environment{ServiceDiscovery: model.NewStaticDiscovery([]*model.Service{svc}, eps, workloads),
		ConfigStore: store, Mesh: model.DefaultMeshConfig(), DomainSuffix: "cluster.local"}
	cache := util.NewCache(1000)
	ds := meshxds.New(env, meshxds.Options{Generators: map[string]model.Generator{
		meshxds.GeneratorKey(model.GeneratorGRPC, model.ClusterType):  clusters.NewGRPCCDS(cache),
		meshxds.GeneratorKey(model.GeneratorGRPC, model.EndpointType): clusters.NewGRPCEDS(cache),
		meshxds.GeneratorKey(model.GeneratorGRPC, model.ListenerType): listeners.NewGRPCLDS(cache),
		meshxds.GeneratorKey(model.GeneratorGRPC, model.RouteType):    routes.NewGRPCRDS(cache),
	}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ds.Start(ctx)
	xdsLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	ds.Register(gs)
	go func() { _ = gs.Serve(xdsLis) }()
	defer gs.Stop()
	xdsAddr := xdsLis.Addr().String()

	// The server: an xDS-managed grpc-go server with xDS credentials.
	screds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	server, err := xds.NewGRPCServer(grpc.Creds(screds),
		xds.BootstrapContentsForTesting(grpcBootstrap(xdsAddr, "sidecar~127.0.0.2~echo-1.default~default.svc.cluster.local", ca.issue(t, serverID))))
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(server, echoServer{})
	go func() { _ = server.Serve(lis) }()
	defer server.Stop()

	// The client: xDS resolver and credentials with its own mesh certificate.
	resolver, err := xds.NewXDSResolverWithConfigForTesting(grpcBootstrap(xdsAddr, "sidecar~127.0.0.5~client.default~default.svc.cluster.local", ca.issue(t, clientID)))
	if err != nil {
		t.Fatal(err)
	}
	ccreds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///echo.default.svc.cluster.local:"+strconv.Itoa(port), grpc.WithTransportCredentials(ccreds), grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	call := func(c *grpc.ClientConn) (*testgrpc.SimpleResponse, error) {
		cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer ccancel()
		return testgrpc.NewTestServiceClient(c).UnaryCall(cctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
	}
	resp, err := call(conn)
	if err != nil {
		t.Fatalf("mTLS RPC through meshd config failed: %v", err)
	}
	if resp.GetUsername() != clientID {
		t.Errorf("server saw peer %q, want %q (the call was not mutual TLS)", resp.GetUsername(), clientID)
	}

	// A client without a mesh certificate (plaintext, straight to the server) is refused.
	plain, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	pctx, pcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer pcancel()
	if _, err := testgrpc.NewTestServiceClient(plain).UnaryCall(pctx, &testgrpc.SimpleRequest{}); err == nil {
		t.Error("a plaintext client reached the mTLS server")
	}
	// A TLS client with a certificate from another root is refused too.
	other := newTestCA(t).issue(t, clientID)
	pair, err := tls.LoadX509KeyPair(filepath.Join(other, "cert.pem"), filepath.Join(other, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.pem)
	foreign, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: "echo", InsecureSkipVerify: true, //nolint:gosec // only the server's check matters here
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	fctx, fcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer fcancel()
	if _, err := testgrpc.NewTestServiceClient(foreign).UnaryCall(fctx, &testgrpc.SimpleRequest{}); err == nil {
		t.Error("a client with a certificate from a foreign root reached the server")
	}

	// An ALLOW policy for another principal: the server's RBAC now denies this client.
	store.set(&model.Config{Kind: model.KindAuthorizationPolicy, Namespace: "default", Name: "only-frontend", Spec: &sec.AuthorizationPolicy{
		Rules: []*sec.Rule{{From: []*sec.Rule_From{{Source: &sec.Source{Principals: []string{"cluster.local/ns/default/sa/frontend"}}}}}},
	}})
	ds.Push(model.NewPushRequest(true, model.ReasonConfigUpdate))
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := call(conn)
		if status.Code(err) == codes.PermissionDenied {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the ALLOW policy for another principal: %v, want PermissionDenied", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Allowing the client's own principal lets it through again.
	store.set(&model.Config{Kind: model.KindAuthorizationPolicy, Namespace: "default", Name: "only-client", Spec: &sec.AuthorizationPolicy{
		Rules: []*sec.Rule{{From: []*sec.Rule_From{{Source: &sec.Source{Principals: []string{"cluster.local/ns/default/sa/client"}}}}}},
	}})
	ds.Push(model.NewPushRequest(true, model.ReasonConfigUpdate))
	deadline = time.Now().Add(20 * time.Second)
	for {
		if _, err := call(conn); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("after allowing the client's principal: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
