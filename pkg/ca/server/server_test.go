package server_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshd/meshd/pkg/ca"
	"github.com/meshd/meshd/pkg/ca/authn"
	"github.com/meshd/meshd/pkg/ca/catest"
	"github.com/meshd/meshd/pkg/ca/server"
)

const (
	productpage = "spiffe://cluster.local/ns/default/sa/productpage"
	istiodName  = "istiod.istio-system.svc"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// tokens the fake API server knows.
var tokens = map[string]catest.Token{
	"productpage-token": {User: "system:serviceaccount:default:productpage", Audiences: []string{"istio-ca"}},
	"reviews-token":     {User: "system:serviceaccount:default:reviews", Audiences: []string{"istio-ca"}},
	"k8s-api-token":     {User: "system:serviceaccount:default:productpage", Audiences: []string{"https://kubernetes.default.svc"}},
}

// harness is the CA service on a loopback TLS port, as istiod serves it on 15012.
type harness struct {
	ca      *ca.CA
	reviews *catest.TokenReviews
	addr    string
}

// start serves the CA; tlsConfig, when set, replaces the server TLS configuration of the secure port.
func start(t *testing.T, tlsConfig func(*ca.CA, *ca.ServingCert) *tls.Config) *harness {
	t.Helper()
	c, err := ca.New(context.Background(), ca.Options{SelfSignedDir: t.TempDir(), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	cs := fake.NewClientset()
	h := &harness{ca: c, reviews: catest.FakeTokenReviews(cs, tokens)}
	jwt, err := authn.NewKubeJWT(authn.KubeJWTOptions{Client: cs, TrustDomain: c.TrustDomain()})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(c, authn.Chain{authn.NewClientCert(c.Roots), jwt}, server.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ca.NewServingCert(c, ca.ServingOptions{DNSNames: ca.DefaultServingDNSNames("istiod", "istio-system", "cluster.local"), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	cfg := ca.ServerTLSConfig(c, sc)
	if tlsConfig != nil {
		cfg = tlsConfig(c, sc)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	t.Cleanup(func() { g.Stop(); <-served })
	h.addr = lis.Addr().String()
	return h
}

// client connects to the CA over TLS, verifying istiod's serving certificate, presenting cert if not nil.
func (h *harness) client(t *testing.T, cert *tls.Certificate) pb.IstioCertificateServiceClient {
	t.Helper()
	cfg := &tls.Config{RootCAs: h.ca.Roots(), ServerName: istiodName}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewIstioCertificateServiceClient(conn)
}

func request(t *testing.T, c pb.IstioCertificateServiceClient, token string, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return c.CreateCertificate(ctx, req)
}

// issue gets a certificate for token's service account and returns it ready for TLS, with its parsed chain.
func (h *harness) issue(t *testing.T, token string) (*tls.Certificate, []*x509.Certificate) {
	t.Helper()
	csr, key := catest.NewCSR(t, catest.CSROptions{})
	resp, err := request(t, h.client(t, nil), token, &pb.IstioCertificateRequest{Csr: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	return tlsCert(t, resp.CertChain, key), catest.ParseChain(t, resp.CertChain)
}

func tlsCert(t *testing.T, chain []string, key crypto.Signer) *tls.Certificate {
	t.Helper()
	certs := catest.ParseChain(t, chain)
	out := &tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, c := range certs[:len(certs)-1] { // the root stays out of the TLS chain
		out.Certificate = append(out.Certificate, c.Raw)
	}
	return out
}

// metric reads a counter or gauge from the default registry, as /metrics shows it.
func metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	families, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// counters snapshots the CA metrics, to assert on what one call changed.
type counters map[string]float64

var counterNames = []string{"citadel_server_csr_count", "citadel_server_success_cert_issuance_count",
	"citadel_server_authentication_failure_count", "citadel_server_csr_parsing_err_count"}

func snapshot(t *testing.T) counters {
	c := counters{}
	for _, n := range counterNames {
		c[n] = metric(t, n)
	}
	for _, e := range []string{"ttl", "impersonation", "internal"} {
		c["sign_err_"+e] = metric(t, "citadel_server_csr_sign_err_count", "error", e)
	}
	return c
}

// changed asserts that exactly the named counters went up by one since c.
func (c counters) changed(t *testing.T, names ...string) {
	t.Helper()
	now := snapshot(t)
	for n, v := range now {
		want := c[n]
		for _, m := range names {
			if m == n {
				want++
			}
		}
		if v != want {
			t.Errorf("%s: %v → %v, want %v", n, c[n], v, want)
		}
	}
}

func TestIssueWithToken(t *testing.T) {
	h := start(t, nil)
	before := snapshot(t)
	csr, key := catest.NewCSR(t, catest.CSROptions{})
	resp, err := request(t, h.client(t, nil), "productpage-token", &pb.IstioCertificateRequest{Csr: string(csr), ValidityDuration: 3600})
	if err != nil {
		t.Fatal(err)
	}
	before.changed(t, "citadel_server_csr_count", "citadel_server_success_cert_issuance_count")
	chain := catest.ParseChain(t, resp.CertChain)
	if len(chain) != 2 || !chain[1].Equal(h.ca.Bundle().Root()) {
		t.Fatalf("chain of %d, want leaf and root last", len(chain))
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: h.ca.Roots(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: h.ca.Roots(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != productpage || len(leaf.DNSNames) != 0 {
		t.Fatalf("SANs URI %v DNS %v", leaf.URIs, leaf.DNSNames)
	}
	if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment ||
		len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Fatalf("CA %v KU %b EKU %v", leaf.IsCA, leaf.KeyUsage, leaf.ExtKeyUsage)
	}
	if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Fatal("not the CSR's key")
	}
	if left := time.Until(leaf.NotAfter); left > time.Hour || left < 59*time.Minute {
		t.Fatalf("validity_duration 3600 gave a certificate expiring in %v", left)
	}
	if got, want := metric(t, "citadel_server_root_cert_expiry_timestamp"), float64(h.ca.RootExpiry().Unix()); got != want {
		t.Fatalf("citadel_server_root_cert_expiry_timestamp %v, want %v", got, want)
	}
}

func TestCallerGetsOnlyItsOwnIdentity(t *testing.T) {
	h := start(t, nil)
	csr, _ := catest.NewCSR(t, catest.CSROptions{
		CommonName: "istiod",
		URIs:       []string{"spiffe://cluster.local/ns/istio-system/sa/istiod", "spiffe://cluster.local/ns/default/sa/reviews"},
		DNSNames:   []string{istiodName, "reviews.default.svc.cluster.local"},
	})
	resp, err := request(t, h.client(t, nil), "productpage-token", &pb.IstioCertificateRequest{Csr: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	leaf := catest.ParseChain(t, resp.CertChain)[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != productpage || len(leaf.DNSNames) != 0 || leaf.Subject.CommonName != "" {
		t.Fatalf("asked for other names, got URI %v DNS %v CN %q", leaf.URIs, leaf.DNSNames, leaf.Subject.CommonName)
	}

	// Nor through the impersonation metadata node agents use.
	before := snapshot(t)
	md, _ := structpb.NewStruct(map[string]any{"ImpersonatedIdentity": "spiffe://cluster.local/ns/default/sa/reviews"})
	resp, err = request(t, h.client(t, nil), "productpage-token", &pb.IstioCertificateRequest{Csr: string(csr), Metadata: md})
	expectRefused(t, resp, err, codes.PermissionDenied, "may not obtain a certificate for spiffe://cluster.local/ns/default/sa/reviews")
	before.changed(t, "citadel_server_csr_count", "sign_err_impersonation")
}

func expectRefused(t *testing.T, resp *pb.IstioCertificateResponse, err error, code codes.Code, msg string) {
	t.Helper()
	if len(resp.GetCertChain()) != 0 {
		t.Fatalf("a certificate came with the refusal: %v", err)
	}
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("got %v, want %v with a message saying %q", err, code, msg)
	}
}

func TestRefusals(t *testing.T) {
	h := start(t, nil)
	client := h.client(t, nil)
	good, _ := catest.NewCSR(t, catest.CSROptions{})
	for _, tc := range []struct {
		name    string
		token   string
		csr     []byte
		ttl     int64
		code    codes.Code
		msg     string
		metrics []string
	}{
		{"expired or forged token", "forged-token", good, 0, codes.Unauthenticated, "invalid bearer token",
			[]string{"citadel_server_authentication_failure_count"}},
		{"token for another audience", "k8s-api-token", good, 0, codes.Unauthenticated, "invalid for the target audiences",
			[]string{"citadel_server_authentication_failure_count"}},
		{"no credentials", "", good, 0, codes.Unauthenticated, "the call has none of: client-certificate, kubernetes-token",
			[]string{"citadel_server_authentication_failure_count"}},
		{"bad CSR signature", "productpage-token", catest.CorruptSignature(t, good), 0, codes.InvalidArgument,
			"signature does not verify", []string{"citadel_server_csr_parsing_err_count"}},
		{"garbage CSR", "productpage-token", []byte("garbage"), 0, codes.InvalidArgument,
			"invalid certificate signing request: not PEM", []string{"citadel_server_csr_parsing_err_count"}},
		{"oversized CSR", "productpage-token", append(bytes.Repeat([]byte("A"), 70<<10), good...), 0, codes.InvalidArgument,
			"bytes, more than the 65536 allowed", []string{"citadel_server_csr_parsing_err_count"}},
		{"TTL above the maximum", "productpage-token", good, int64(91 * 24 * 3600), codes.InvalidArgument,
			"above the maximum 2160h0m0s", []string{"sign_err_ttl"}},
		{"negative TTL", "productpage-token", good, -1, codes.InvalidArgument, "out of range", []string{"sign_err_ttl"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshot(t)
			resp, err := request(t, client, tc.token, &pb.IstioCertificateRequest{Csr: string(tc.csr), ValidityDuration: tc.ttl})
			expectRefused(t, resp, err, tc.code, tc.msg)
			before.changed(t, append(tc.metrics, "citadel_server_csr_count")...)
		})
	}
	t.Run("API server down", func(t *testing.T) {
		h.reviews.SetError(apierrors.NewServiceUnavailable("etcd is down"))
		defer h.reviews.SetError(nil)
		before := snapshot(t)
		resp, err := request(t, client, "productpage-token", &pb.IstioCertificateRequest{Csr: string(good)})
		expectRefused(t, resp, err, codes.Unavailable, "TokenReview failed")
		before.changed(t, "citadel_server_csr_count", "citadel_server_authentication_failure_count")
	})
}

// TestClientCertificateAuthentication: a workload renews with the certificate the CA gave it, without a token;
// a certificate of another root is refused, by the TLS handshake of the secure port and, behind a port that
// does not verify client certificates, by the authenticator.
func TestClientCertificateAuthentication(t *testing.T) {
	h := start(t, nil)
	cert, _ := h.issue(t, "reviews-token")
	before := snapshot(t)
	csr, _ := catest.NewCSR(t, catest.CSROptions{})
	resp, err := request(t, h.client(t, cert), "", &pb.IstioCertificateRequest{Csr: string(csr)})
	if err != nil {
		t.Fatal(err)
	}
	if leaf := catest.ParseChain(t, resp.CertChain)[0]; leaf.URIs[0].String() != "spiffe://cluster.local/ns/default/sa/reviews" {
		t.Fatalf("renewed as %v", leaf.URIs)
	}
	before.changed(t, "citadel_server_csr_count", "citadel_server_success_cert_issuance_count")

	// With a certificate and the token of another identity, the certificate (checked first) decides.
	resp, err = request(t, h.client(t, cert), "productpage-token", &pb.IstioCertificateRequest{Csr: string(csr)})
	if err != nil || catest.ParseChain(t, resp.CertChain)[0].URIs[0].String() != "spiffe://cluster.local/ns/default/sa/reviews" {
		t.Fatalf("certificate and token: %v", err)
	}

	other := start(t, nil)
	foreign, _ := other.issue(t, "reviews-token")
	before = snapshot(t)
	resp, err = request(t, h.client(t, foreign), "", &pb.IstioCertificateRequest{Csr: string(csr)})
	if err == nil || len(resp.GetCertChain()) != 0 {
		t.Fatal("a certificate of another root was accepted")
	}
	before.changed(t) // refused in the handshake: the service never saw the call

	lax := start(t, func(c *ca.CA, sc *ca.ServingCert) *tls.Config {
		return &tls.Config{GetCertificate: sc.GetCertificate, ClientAuth: tls.RequireAnyClientCert}
	})
	resp, err = request(t, lax.client(t, foreign), "", &pb.IstioCertificateRequest{Csr: string(csr)})
	expectRefused(t, resp, err, codes.Unauthenticated, "does not verify against the mesh roots")
	before.changed(t, "citadel_server_csr_count", "citadel_server_authentication_failure_count")
}
