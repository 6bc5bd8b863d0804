package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	securityapi "istio.io/api/security/v1alpha1"

	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/pkg/ca"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/test/xdstest"
)

func startSecureMeshd(t *testing.T, dir string) *bootstrap.Server {
	t.Helper()
	args, err := bootstrap.DefaultArgs()
	if err != nil {
		t.Fatal(err)
	}
	args.GRPCAddr, args.HTTPAddr, args.MonitoringAddr, args.SecureGRPCAddr, args.HTTPSAddr = "", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", ""
	args.ConfigDir, args.MeshConfigFile, args.CACertsDir, args.CASelfSignedDir = dir, "", "", t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := bootstrap.NewServer(ctx, args, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); s.Wait() })
	return s
}

// workloadCert has the CA sign a fresh key for identity, as the agent's CSR would get signed.
func workloadCert(t *testing.T, c *ca.CA, identity string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.Sign(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), identity, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(strings.Join(chain, "")), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func tlsTo(t *testing.T, s *bootstrap.Server, certs ...tls.Certificate) grpc.DialOption {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(s.CA().RootPEM()) {
		t.Fatal("root PEM")
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: roots, ServerName: "istiod.istio-system.svc", Certificates: certs, MinVersion: tls.VersionTLS12,
	}))
}

// TestSecurePortServesOnlyYourOwnConfig: on 15012, over TLS verified against meshd's root, a proxy with a
// mesh certificate gets its config; it cannot ask as another namespace or another workload; without a
// certificate it is refused; and the CA on the same port renews its certificate for its own identity only.
func TestSecurePortServesOnlyYourOwnConfig(t *testing.T) {
	s := startSecureMeshd(t, copySample(t))
	if s.GRPCListener != nil {
		t.Fatalf("--grpcAddr \"\" still serves plaintext ADS on %s", s.GRPCListener)
	}
	addr := s.SecureGRPCListener.String()
	meta := map[string]any{"NAMESPACE": "default"}
	productpage := workloadCert(t, s.CA(), "spiffe://cluster.local/ns/default/sa/bookinfo-productpage")

	e, err := xdstest.DialWith(t, addr, productpageID, meta, tlsTo(t, s, productpage))
	if err != nil {
		t.Fatal(err)
	}
	if r := e.Next(15 * time.Second); r.TypeUrl != model.ClusterType || len(r.Resources) == 0 {
		t.Fatalf("productpage over mTLS got %s with %d resources", r.TypeUrl, len(r.Resources))
	}

	refused := func(name string, want codes.Code, cert ...tls.Certificate) {
		t.Helper()
		e, err := xdstest.DialWith(t, addr, productpageID, meta, tlsTo(t, s, cert...))
		if err == nil {
			err = e.Err(15 * time.Second)
		}
		if status.Code(err) != want {
			t.Errorf("%s: %v, want %v", name, err, want)
		}
	}
	refused("details' certificate asking as productpage", codes.PermissionDenied,
		workloadCert(t, s.CA(), "spiffe://cluster.local/ns/default/sa/bookinfo-details"))
	refused("another namespace's certificate", codes.PermissionDenied,
		workloadCert(t, s.CA(), "spiffe://cluster.local/ns/prod/sa/bookinfo-productpage"))
	refused("no certificate", codes.Unauthenticated)

	// Renewal through the CA service on the same port, authenticated by the current certificate.
	conn, err := grpc.NewClient(addr, tlsTo(t, s, productpage))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs: nil, DNSNames: []string{"details.default.svc"}}, key)
	resp, err := securityapi.NewIstioCertificateServiceClient(conn).CreateCertificate(t.Context(), &securityapi.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), ValidityDuration: 3600})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(resp.CertChain[0]))
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://cluster.local/ns/default/sa/bookinfo-productpage" || len(leaf.DNSNames) != 0 {
		t.Fatalf("renewed certificate names %v %v, want only the caller's identity", leaf.URIs, leaf.DNSNames)
	}
}
