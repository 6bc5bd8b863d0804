// Package caclient is the agent's client of the CA: istiod's IstioCertificateService (istio.v1.auth), which
// signs a CSR for the identity the caller authenticates as. The private key never reaches this package: the
// caller sends only the CSR.
package caclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"
)

// ClusterIDKey is the request metadata naming the caller's cluster, as Istio's agent sends it; a multi-cluster
// CA uses it to pick the API server that checks the token.
const ClusterIDKey = "ClusterID"

// Options configure a Client.
type Options struct {
	// Addr is the CA's host:port, istiod.istio-system.svc:15012 in a cluster.
	Addr string
	// DialOptions carry the transport security (TLS verifying the CA against the mesh root) and the per-RPC
	// credentials (TokenCredentials and/or a client certificate); the caller chooses them. At least the
	// transport credentials are required: grpc refuses to dial without them.
	DialOptions []grpc.DialOption
	// ClusterID is sent with every request as ClusterIDKey metadata; nothing is sent when empty.
	ClusterID string
	Logger    *slog.Logger
}

// Client signs CSRs with the CA. It is safe for concurrent use; the connection is made lazily and re-made by
// grpc after failures.
type Client struct {
	addr      string
	clusterID string
	conn      *grpc.ClientConn
	client    pb.IstioCertificateServiceClient
	log       *slog.Logger
}

// New returns a client of the CA at opts.Addr. It does not connect: the first Sign does.
func New(opts Options) (*Client, error) {
	if opts.Addr == "" {
		return nil, errors.New("CA client: no CA address")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	conn, err := grpc.NewClient(opts.Addr, opts.DialOptions...)
	if err != nil {
		return nil, fmt.Errorf("CA client for %s: %w", opts.Addr, err)
	}
	return &Client{
		addr:      opts.Addr,
		clusterID: opts.ClusterID,
		conn:      conn,
		client:    pb.NewIstioCertificateServiceClient(conn),
		log:       opts.Logger.With("component", "caclient", "ca", opts.Addr),
	}, nil
}

// Sign sends csrPEM to the CA asking for a certificate valid for ttl (rounded up to whole seconds, the unit of
// the protocol; 0 lets the CA choose) and returns the chain it issued: one PEM per element, leaf first, root
// last. The error keeps the gRPC status of the CA's answer (status.Code works on it).
func (c *Client) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration) ([]string, error) {
	if ttl < 0 {
		return nil, fmt.Errorf("CA %s: negative certificate TTL %s", c.addr, ttl)
	}
	req := &pb.IstioCertificateRequest{
		Csr:              string(csrPEM),
		ValidityDuration: int64((ttl + time.Second - 1) / time.Second),
	}
	if c.clusterID != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, ClusterIDKey, c.clusterID)
	}
	start := time.Now()
	resp, err := c.client.CreateCertificate(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("CA %s: requesting a certificate: %w", c.addr, err)
	}
	chain := resp.GetCertChain()
	if len(chain) == 0 {
		return nil, fmt.Errorf("CA %s: the response holds no certificate", c.addr)
	}
	for i, p := range chain {
		if strings.TrimSpace(p) == "" {
			return nil, fmt.Errorf("CA %s: element %d of the returned chain is empty", c.addr, i)
		}
	}
	c.log.Debug("certificate signed", "chainLength", len(chain), "ttl", ttl, "took", time.Since(start))
	return chain, nil
}

// Close closes the connection.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("CA client for %s: closing: %w", c.addr, err)
	}
	return nil
}

// RootTLSConfig is the TLS client configuration for the control plane and the CA: it trusts only the roots of
// the PEM file at path (the mesh root, mounted from the istio-ca-root-cert ConfigMap) and expects serverName in
// the server's certificate (istiod.istio-system.svc). The file is read once, now.
func RootTLSConfig(path, serverName string) (*tls.Config, error) {
	pemBytes, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mesh root certificate: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("mesh root certificate %s: no PEM certificate in it", path)
	}
	return &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12}, nil
}

// TokenCredentials sends "authorization: Bearer <token>" with every call, the token read from path each time:
// the kubelet rewrites a projected service-account token before it expires, so a token read once would
// eventually be refused.
func TokenCredentials(path string) credentials.PerRPCCredentials {
	return tokenFile(path)
}

type tokenFile string

func (p tokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(p))
	if err != nil {
		return nil, fmt.Errorf("reading the token: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return nil, fmt.Errorf("token file %s is empty", string(p))
	}
	return map[string]string{"authorization": "Bearer " + token}, nil
}

// RequireTransportSecurity is true: a bearer token in clear text could be replayed by anyone on the path.
func (tokenFile) RequireTransportSecurity() bool { return true }
