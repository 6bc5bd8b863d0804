// Package caclienttest runs meshd's real CA service (pkg/ca, pkg/ca/server with token and client-certificate
// authentication against a fake TokenReview endpoint) on a loopback TLS port, for tests of the agent's
// certificate handling. It is for tests only.
package caclienttest

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshd/meshd/pkg/agent/caclient"
	"github.com/meshd/meshd/pkg/ca"
	"github.com/meshd/meshd/pkg/ca/authn"
	"github.com/meshd/meshd/pkg/ca/catest"
	caserver "github.com/meshd/meshd/pkg/ca/server"
)

// ServerName is the name in the CA's serving certificate that clients verify.
const ServerName = "istiod.istio-system.svc"

// Tokens the fake API server accepts by default.
var Tokens = map[string]catest.Token{
	"productpage-token": {User: "system:serviceaccount:default:productpage", Audiences: []string{authn.DefaultAudience}},
	"reviews-token":     {User: "system:serviceaccount:default:reviews", Audiences: []string{authn.DefaultAudience}},
}

// Quiet is a logger that discards everything.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// CA is the CA service on 127.0.0.1.
type CA struct {
	CA      *ca.CA
	Reviews *catest.TokenReviews
	// Addr stays the same across Stop and Restart.
	Addr string

	svc     *caserver.Server
	tls     *tls.Config
	mu      sync.Mutex
	grpc    *grpc.Server
	served  chan struct{}
	cluster []string
	calls   int
}

// Start serves a new CA (self-signed root, trust domain cluster.local) accepting tokens (Tokens when nil). It
// stops when the test ends.
func Start(t testing.TB, tokens map[string]catest.Token) *CA {
	t.Helper()
	if tokens == nil {
		tokens = Tokens
	}
	c, err := ca.New(context.Background(), ca.Options{TrustDomain: "cluster.local", SelfSignedDir: t.TempDir(), Logger: Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	cs := fake.NewClientset()
	h := &CA{CA: c, Reviews: catest.FakeTokenReviews(cs, tokens)}
	jwt, err := authn.NewKubeJWT(authn.KubeJWTOptions{Client: cs, TrustDomain: c.TrustDomain()})
	if err != nil {
		t.Fatal(err)
	}
	if h.svc, err = caserver.New(c, authn.Chain{authn.NewClientCert(c.Roots), jwt}, caserver.Options{Logger: Quiet()}); err != nil {
		t.Fatal(err)
	}
	sc, err := ca.NewServingCert(c, ca.ServingOptions{DNSNames: []string{ServerName}, Logger: Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	h.tls = ca.ServerTLSConfig(c, sc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.Addr = lis.Addr().String()
	h.serve(lis)
	t.Cleanup(h.Stop)
	return h
}

func (h *CA) serve(lis net.Listener) {
	record := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		h.mu.Lock()
		h.calls++
		h.cluster = append(h.cluster, md.Get(caclient.ClusterIDKey)...)
		h.mu.Unlock()
		return next(ctx, req)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(h.tls)), grpc.UnaryInterceptor(record))
	h.svc.Register(g)
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	h.mu.Lock()
	h.grpc, h.served = g, served
	h.mu.Unlock()
}

// Stop stops serving (the CA is down: connections are refused); idempotent.
func (h *CA) Stop() {
	h.mu.Lock()
	g, served := h.grpc, h.served
	h.grpc, h.served = nil, nil
	h.mu.Unlock()
	if g != nil {
		g.Stop()
		<-served
	}
}

// Restart serves again on the same address after Stop.
func (h *CA) Restart(t testing.TB) {
	t.Helper()
	lis, err := net.Listen("tcp", h.Addr)
	if err != nil {
		t.Fatalf("listening again on %s: %v", h.Addr, err)
	}
	h.serve(lis)
}

// Calls is the number of CreateCertificate calls that reached the service.
func (h *CA) Calls() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls
}

// ClusterIDs are the ClusterID metadata values received, in order.
func (h *CA) ClusterIDs() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.cluster...)
}

// TransportCredentials trust the CA's root and expect ServerName, as the agent dials istiod.
func (h *CA) TransportCredentials() credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{RootCAs: h.CA.Roots(), ServerName: ServerName, MinVersion: tls.VersionTLS12})
}

// TokenFile writes token to a new file and returns its path.
func TokenFile(t testing.TB, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Client is a caclient.Client of the CA authenticating with the token in tokenPath; closed when the test ends.
func (h *CA) Client(t testing.TB, tokenPath string) *caclient.Client {
	t.Helper()
	c, err := caclient.New(caclient.Options{
		Addr:        h.Addr,
		DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(h.TransportCredentials()), grpc.WithPerRPCCredentials(caclient.TokenCredentials(tokenPath))},
		ClusterID:   "Kubernetes",
		Logger:      Quiet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
