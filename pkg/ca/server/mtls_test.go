package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/pkg/ca/authn"
)

const reviews = "spiffe://cluster.local/ns/default/sa/reviews"

// meshServer is a grpc-go service (reviews) that accepts only mesh peers (client certificates chained to the
// mesh root, verified in the handshake) and, among them, only the identity allowed.
func meshServer(t *testing.T, cert *tls.Certificate, roots *x509.CertPool, allowed string) (addr string, handled *atomic.Int32) {
	t.Helper()
	handled = &atomic.Int32{}
	peerID := authn.NewClientCert(func() *x509.CertPool { return roots })
	authz := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		handled.Add(1)
		caller, err := peerID.Authenticate(ctx)
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, err.Error())
		}
		if caller.Identity != allowed {
			return nil, status.Errorf(codes.PermissionDenied, "%s may not call %s", caller.Identity, info.FullMethod)
		}
		return next(ctx, req)
	}
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{*cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    roots,
			MinVersion:   tls.VersionTLS13,
		})),
		grpc.UnaryInterceptor(authz))
	healthpb.RegisterHealthServer(g, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	t.Cleanup(func() { g.Stop(); <-served })
	return lis.Addr().String(), handled
}

// meshCall calls the health service as a mesh client: it presents cert (if any) and accepts the server only
// if its certificate chains to roots and names the expected SPIFFE ID (workload certificates have no DNS names,
// so the check is on the identity, not on a host name).
func meshCall(t *testing.T, addr string, cert *tls.Certificate, roots *x509.CertPool, expectServer string) error {
	t.Helper()
	cfg := &tls.Config{
		RootCAs:            roots,
		InsecureSkipVerify: true, // replaced by VerifyConnection: chain and SPIFFE ID
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := authn.VerifyPeer(cs.PeerCertificates, roots, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if id != expectServer {
				return fmt.Errorf("server is %s, want %s", id, expectServer)
			}
			return nil
		},
		MinVersion: tls.VersionTLS13,
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err == nil && resp.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health %v", resp.Status)
	}
	return err
}

// TestMeshMTLS: two grpc-go services talk mutual TLS with certificates meshd issued; a client without a mesh
// certificate, or with one of another root, is refused in the handshake; a mesh client of the wrong identity is
// refused by the server's policy; a client expecting another server identity refuses the server.
func TestMeshMTLS(t *testing.T) {
	h := start(t, nil)
	reviewsCert, _ := h.issue(t, "reviews-token")
	productpageCert, _ := h.issue(t, "productpage-token")
	roots := h.ca.Roots()
	addr, handled := meshServer(t, reviewsCert, roots, productpage)

	if err := meshCall(t, addr, productpageCert, roots, reviews); err != nil {
		t.Fatalf("productpage → reviews over mTLS: %v", err)
	}
	if handled.Load() != 1 {
		t.Fatalf("%d calls reached the service, want 1", handled.Load())
	}

	err := meshCall(t, addr, nil, roots, reviews)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("client without a certificate: %v, want the handshake to fail (Unavailable)", err)
	}
	other := start(t, nil)
	foreignCert, _ := other.issue(t, "productpage-token")
	if err := meshCall(t, addr, foreignCert, roots, reviews); status.Code(err) != codes.Unavailable {
		t.Fatalf("client with a certificate of another root: %v, want the handshake to fail (Unavailable)", err)
	}
	if handled.Load() != 1 {
		t.Fatalf("a refused client reached the service (%d calls)", handled.Load())
	}

	if err := meshCall(t, addr, reviewsCert, roots, reviews); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reviews calling reviews: %v, want PermissionDenied", err)
	}
	if err := meshCall(t, addr, productpageCert, roots, "spiffe://cluster.local/ns/default/sa/ratings"); status.Code(err) != codes.Unavailable {
		t.Fatalf("client expecting ratings, server is reviews: %v, want the handshake to fail", err)
	}
}
