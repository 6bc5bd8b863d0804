package sds_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/agent/caclient/caclienttest"
	"github.com/meshd/meshd/pkg/agent/sds"
	"github.com/meshd/meshd/pkg/agent/secrets"
)

const productpage = "spiffe://cluster.local/ns/default/sa/productpage"

// socketPath is a socket path in a fresh directory, short enough for a Unix socket.
func socketPath(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if len(dir) > 50 {
		d, err := os.MkdirTemp("", "sds")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	return filepath.Join(dir, "workload-spiffe-uds", "socket")
}

type env struct {
	ca     *caclienttest.CA
	m      *secrets.Manager
	socket string
	stop   func() error // stops Serve and returns its result
}

// start runs the CA, a manager renewing ttl certificates halfway, and the SDS server.
func start(t *testing.T, ttl time.Duration) *env {
	t.Helper()
	h := caclienttest.Start(t, nil)
	m, err := secrets.NewManager(secrets.Options{
		Signer:      h.Client(t, caclienttest.TokenFile(t, "productpage-token")),
		TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "productpage",
		TTL: ttl, Logger: caclienttest.Quiet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { m.Run(ctx); close(ran) }()
	e := &env{ca: h, m: m, socket: socketPath(t)}
	srv, err := sds.New(sds.Options{Socket: e.socket, Secrets: m, Logger: caclienttest.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	var result error
	stopped := false
	e.stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			result = <-served
			<-ran
		}
		return result
	}
	t.Cleanup(func() { _ = e.stop() })
	return e
}

// client connects to the SDS socket as Envoy does.
func (e *env) client(t *testing.T) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+e.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

func streamCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// received are the secrets of one response.
type received struct {
	leaf      *x509.Certificate
	chainPEM  []byte
	keyPEM    []byte
	rootPEM   []byte
	resources int
}

func decode(t *testing.T, resources []*anypb.Any) received {
	t.Helper()
	var r received
	for _, a := range resources {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			t.Fatalf("resource %s: %v", a.TypeUrl, err)
		}
		if a.TypeUrl != sds.SecretType {
			t.Fatalf("resource type %s", a.TypeUrl)
		}
		r.resources++
		switch s.Name {
		case secrets.WorkloadCertName:
			tc := s.GetTlsCertificate()
			r.chainPEM, r.keyPEM = tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes()
			pair, err := tls.X509KeyPair(r.chainPEM, r.keyPEM)
			if err != nil {
				t.Fatalf("default: certificate and key do not match: %v", err)
			}
			r.leaf = pair.Leaf
		case secrets.RootCertName:
			r.rootPEM = s.GetValidationContext().GetTrustedCa().GetInlineBytes()
		default:
			t.Fatalf("unexpected secret %q", s.Name)
		}
	}
	return r
}

// verify checks the workload certificate is productpage's and chains to root.
func verify(t *testing.T, leaf *x509.Certificate, chainPEM, root []byte) {
	t.Helper()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != productpage {
		t.Fatalf("leaf URIs %v, want [%s]", leaf.URIs, productpage)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(root) {
		t.Fatal("no root certificate")
	}
	inter := x509.NewCertPool()
	rest := chainPEM
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
		t.Fatalf("workload certificate does not verify against ROOTCA: %v", err)
	}
}

// TestStreamSecrets: over the state-of-the-world protocol, Envoy's request for default and ROOTCA (and a name
// the agent does not serve) is answered with a matching key and certificate chaining to ROOTCA; after the ACK,
// renewed certificates are pushed on the same stream without another request; a NACK is not answered with the
// same version again.
func TestStreamSecrets(t *testing.T) {
	e := start(t, 2*time.Second)
	stream, err := e.client(t).StreamSecrets(streamCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	node := &corev3.Node{Id: "sidecar~10.0.0.1~productpage-1.default~default.svc.cluster.local"}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: sds.SecretType,
		ResourceNames: []string{secrets.WorkloadCertName, secrets.RootCertName, "file-root:/etc/certs/root-cert.pem"}}); err != nil {
		t.Fatal(err)
	}
	resp1, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got1 := decode(t, resp1.Resources)
	if got1.resources != 2 || got1.leaf == nil || got1.rootPEM == nil {
		t.Fatalf("first response has %d resources, want default and ROOTCA", got1.resources)
	}
	if !bytes.Equal(bytes.TrimSpace(got1.rootPEM), bytes.TrimSpace(e.ca.CA.RootPEM())) {
		t.Fatal("ROOTCA is not the CA's root")
	}
	verify(t, got1.leaf, got1.chainPEM, got1.rootPEM)
	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretType, VersionInfo: resp1.VersionInfo,
		ResponseNonce: resp1.Nonce, ResourceNames: []string{secrets.RootCertName, secrets.WorkloadCertName, "file-root:/etc/certs/root-cert.pem"}}); err != nil {
		t.Fatal(err)
	}

	resp2, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got2 := decode(t, resp2.Resources)
	if got2.leaf == nil || got2.leaf.SerialNumber.Cmp(got1.leaf.SerialNumber) == 0 {
		t.Fatal("the push after the ACK does not carry a renewed certificate")
	}
	if bytes.Equal(got2.keyPEM, got1.keyPEM) {
		t.Fatal("the renewed certificate kept the private key")
	}
	verify(t, got2.leaf, got2.chainPEM, got2.rootPEM)
	if resp2.VersionInfo == resp1.VersionInfo || resp2.Nonce == resp1.Nonce {
		t.Fatalf("renewal pushed with version %q nonce %q, the same as before", resp2.VersionInfo, resp2.Nonce)
	}

	if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: sds.SecretType, VersionInfo: resp1.VersionInfo,
		ResponseNonce: resp2.Nonce, ResourceNames: []string{secrets.WorkloadCertName, secrets.RootCertName, "file-root:/etc/certs/root-cert.pem"},
		ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "rejected for the test"}}); err != nil {
		t.Fatal(err)
	}
	resp3, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got3 := decode(t, resp3.Resources)
	if resp3.VersionInfo == resp2.VersionInfo || got3.leaf == nil || got3.leaf.SerialNumber.Cmp(got2.leaf.SerialNumber) == 0 {
		t.Fatal("the NACKed version was sent again instead of the next certificate")
	}
}

// TestDeltaSecrets: over the incremental protocol, subscribing to default and ROOTCA returns both; a renewed
// certificate is then pushed on the same stream, without ROOTCA, which did not change.
func TestDeltaSecrets(t *testing.T) {
	e := start(t, 2*time.Second)
	stream, err := e.client(t).DeltaSecrets(streamCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "sidecar~10.0.0.1~p.default~default.svc.cluster.local"},
		TypeUrl: sds.SecretType, ResourceNamesSubscribe: []string{secrets.WorkloadCertName, secrets.RootCertName, "unknown"}}); err != nil {
		t.Fatal(err)
	}
	resp1, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	anys := func(r *discoveryv3.DeltaDiscoveryResponse) []*anypb.Any {
		var out []*anypb.Any
		for _, res := range r.Resources {
			if res.Version == "" {
				t.Fatalf("resource %s without version", res.Name)
			}
			out = append(out, res.Resource)
		}
		return out
	}
	got1 := decode(t, anys(resp1))
	if got1.resources != 2 || got1.leaf == nil || got1.rootPEM == nil {
		t.Fatalf("first response has %d resources, want default and ROOTCA", got1.resources)
	}
	verify(t, got1.leaf, got1.chainPEM, got1.rootPEM)
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: sds.SecretType, ResponseNonce: resp1.Nonce}); err != nil {
		t.Fatal(err)
	}

	resp2, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got2 := decode(t, anys(resp2))
	if got2.resources != 1 || got2.leaf == nil {
		t.Fatalf("renewal pushed %d resources, want only default", got2.resources)
	}
	if got2.leaf.SerialNumber.Cmp(got1.leaf.SerialNumber) == 0 || bytes.Equal(got2.keyPEM, got1.keyPEM) {
		t.Fatal("the push does not carry a renewed certificate and key")
	}
	verify(t, got2.leaf, got2.chainPEM, got1.rootPEM)
	if resp2.Nonce == resp1.Nonce {
		t.Fatal("nonce reused")
	}
}

// TestDeltaReconnectKnownVersion: a client reconnecting with the current version of a secret is not sent it
// again; one subscribing without it is.
func TestDeltaReconnectKnownVersion(t *testing.T) {
	e := start(t, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	root, err := e.m.Get(ctx, secrets.RootCertName)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := e.client(t).DeltaSecrets(streamCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: sds.SecretType,
		ResourceNamesSubscribe:  []string{secrets.RootCertName, secrets.WorkloadCertName},
		InitialResourceVersions: map[string]string{secrets.RootCertName: root.Version}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != 1 || resp.Resources[0].Name != secrets.WorkloadCertName {
		var names []string
		for _, r := range resp.Resources {
			names = append(names, r.Name)
		}
		t.Fatalf("reconnection got %v, want only default (ROOTCA is current)", names)
	}
}

// TestFetchSecretsUnimplemented: the unary call Envoy does not use is refused cleanly.
func TestFetchSecretsUnimplemented(t *testing.T) {
	e := start(t, time.Hour)
	_, err := e.client(t).FetchSecrets(streamCtx(t), &discoveryv3.DiscoveryRequest{ResourceNames: []string{"default"}})
	if grpcstatus.Code(err) != codes.Unimplemented {
		t.Fatalf("FetchSecrets: %v, want Unimplemented", err)
	}
}

// TestSocket: the socket's directory is created 0750 and the socket is 0600; a stale socket file is replaced,
// a live one is not taken over; Serve removes the socket when it stops.
func TestSocket(t *testing.T) {
	h := caclienttest.Start(t, nil)
	m, err := secrets.NewManager(secrets.Options{Signer: h.Client(t, caclienttest.TokenFile(t, "productpage-token")),
		Namespace: "default", ServiceAccount: "productpage", Logger: caclienttest.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	path := socketPath(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	nested := filepath.Join(filepath.Dir(path), "new", "socket")
	srv, err := sds.New(sds.Options{Socket: nested, Secrets: m, Logger: caclienttest.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Dir(nested)); err != nil || fi.Mode().Perm() != 0o750 {
		t.Fatalf("created socket directory: %v, mode %v, want 0750", err, fi.Mode().Perm())
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	defer func() { cancel(); <-served }()

	stale, err := sds.New(sds.Options{Socket: path, Secrets: m, Logger: caclienttest.Quiet()})
	if err != nil {
		t.Fatalf("a stale file at the socket path: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v, mode %v, want a 0600 socket", err, fi.Mode())
	}
	sctx, scancel := context.WithCancel(context.Background())
	sdone := make(chan error, 1)
	go func() { sdone <- stale.Serve(sctx) }()

	if _, err := sds.New(sds.Options{Socket: path, Secrets: m, Logger: caclienttest.Quiet()}); err == nil ||
		!strings.Contains(err.Error(), "in use") {
		t.Fatalf("taking over a live socket: %v, want refused", err)
	}
	scancel()
	if err := <-sdone; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after Serve returned: %v", err)
	}
}

// TestServeStopsStreams: stopping the server ends open streams (Envoy reconnects to the next agent) and
// Serve returns.
func TestServeStopsStreams(t *testing.T) {
	e := start(t, time.Hour)
	stream, err := e.client(t).StreamSecrets(streamCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{ResourceNames: []string{secrets.RootCertName}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := e.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := stream.Recv(); err == nil {
		t.Fatal("stream still open after the server stopped")
	}
	testutil.Eventually(t, 5*time.Second, "socket removed", func() bool {
		_, err := os.Lstat(e.socket)
		return os.IsNotExist(err)
	})
}
