package caclient_test

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/pkg/agent/caclient"
	"github.com/meshd/meshd/pkg/agent/caclient/caclienttest"
	"github.com/meshd/meshd/pkg/ca/catest"
)

const productpage = "spiffe://cluster.local/ns/default/sa/productpage"

func sign(t *testing.T, c *caclient.Client, ttl time.Duration) ([]*x509.Certificate, error) {
	t.Helper()
	csr, _ := catest.NewCSR(t, catest.CSROptions{URIs: []string{"spiffe://cluster.local/ns/default/sa/whatever"}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	chain, err := c.Sign(ctx, csr, ttl)
	if err != nil {
		return nil, err
	}
	return catest.ParseChain(t, chain), nil
}

func leafIdentity(t *testing.T, chain []*x509.Certificate) string {
	t.Helper()
	if len(chain[0].URIs) != 1 {
		t.Fatalf("leaf carries URIs %v, want exactly one", chain[0].URIs)
	}
	return chain[0].URIs[0].String()
}

// TestSign: over TLS verified against the CA root read from a file, with the service-account token, the CA
// issues a chain whose leaf carries exactly the token's identity (not the CSR's), valid for the TTL asked,
// chaining to the CA root; the ClusterID metadata reaches the CA.
func TestSign(t *testing.T) {
	h := caclienttest.Start(t, nil)
	rootFile := filepath.Join(t.TempDir(), "root-cert.pem")
	if err := os.WriteFile(rootFile, h.CA.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	tlsConfig, err := caclient.RootTLSConfig(rootFile, caclienttest.ServerName)
	if err != nil {
		t.Fatal(err)
	}
	c, err := caclient.New(caclient.Options{
		Addr: h.Addr,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)),
			grpc.WithPerRPCCredentials(caclient.TokenCredentials(caclienttest.TokenFile(t, "productpage-token\n")))},
		ClusterID: "cluster-1",
		Logger:    caclienttest.Quiet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	start := time.Now()
	chain, err := sign(t, c, 90*time.Minute)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if id := leafIdentity(t, chain); id != productpage {
		t.Fatalf("leaf identity %s, want %s", id, productpage)
	}
	if got := chain[0].NotAfter.Sub(start); got < 89*time.Minute || got > 91*time.Minute {
		t.Errorf("leaf valid for %s, want the 90m asked for", got)
	}
	inter := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: h.CA.Roots(), Intermediates: inter}); err != nil {
		t.Fatalf("leaf does not verify against the CA root: %v", err)
	}
	if got := h.ClusterIDs(); !slices.Equal(got, []string{"cluster-1"}) {
		t.Fatalf("ClusterID metadata received %v, want [cluster-1]", got)
	}
}

// TestWrongTokenRefused: a token the API server does not know gets no certificate, and the error says why.
func TestWrongTokenRefused(t *testing.T) {
	h := caclienttest.Start(t, nil)
	c := h.Client(t, caclienttest.TokenFile(t, "forged-token"))
	_, err := sign(t, c, time.Hour)
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Sign with a forged token: %v, want Unauthenticated", err)
	}
	if !strings.Contains(err.Error(), "token rejected") || !strings.Contains(err.Error(), h.Addr) {
		t.Fatalf("error %q names neither the cause (token rejected) nor the CA", err)
	}
}

// TestTokenReadOnEveryCall: the projected token is rotated by the kubelet; each call sends the file's current
// content, and an empty file fails the call without reaching the CA.
func TestTokenReadOnEveryCall(t *testing.T) {
	h := caclienttest.Start(t, nil)
	path := caclienttest.TokenFile(t, "productpage-token")
	c := h.Client(t, path)
	chain, err := sign(t, c, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if id := leafIdentity(t, chain); id != productpage {
		t.Fatalf("first call: identity %s, want %s", id, productpage)
	}
	if err := os.WriteFile(path, []byte("reviews-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	chain, err = sign(t, c, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if id, want := leafIdentity(t, chain), "spiffe://cluster.local/ns/default/sa/reviews"; id != want {
		t.Fatalf("after the token file changed: identity %s, want %s", id, want)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	calls := h.Calls()
	if _, err := sign(t, c, time.Hour); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("empty token file: %v, want an error saying it is empty", err)
	}
	if h.Calls() != calls {
		t.Fatal("a call without a token reached the CA")
	}
}

// TestTokenNeedsTLS: the token is never sent in clear text: a plaintext connection with it is refused.
func TestTokenNeedsTLS(t *testing.T) {
	creds := caclient.TokenCredentials(caclienttest.TokenFile(t, "productpage-token"))
	if !creds.RequireTransportSecurity() {
		t.Fatal("token credentials do not require transport security")
	}
	_, err := caclient.New(caclient.Options{Addr: "127.0.0.1:1", DialOptions: []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(creds)}})
	if err == nil || !strings.Contains(err.Error(), "transport") {
		t.Fatalf("plaintext client with a token: %v, want it refused", err)
	}
}
