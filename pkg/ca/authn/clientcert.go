package authn

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/meshd/meshd/pkg/ca"
)

// ClientCert authenticates the client certificate of a call's TLS connection: it must chain to one of the
// mesh roots, allow client authentication, and carry exactly one URI SAN, a SPIFFE ID, which is the caller.
type ClientCert struct {
	roots func() *x509.CertPool
}

// NewClientCert returns a client-certificate authenticator; roots is read on every call, so that it follows
// a change of roots (pass (*ca.CA).Roots).
func NewClientCert(roots func() *x509.CertPool) *ClientCert {
	return &ClientCert{roots: roots}
}

// Method implements Authenticator.
func (a *ClientCert) Method() string { return MethodClientCertificate }

// Authenticate implements Authenticator.
func (a *ClientCert) Authenticate(ctx context.Context) (*Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, fmt.Errorf("%w: no peer", ErrNoCredentials)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, fmt.Errorf("%w: not a TLS connection", ErrNoCredentials)
	}
	if len(info.State.PeerCertificates) == 0 {
		return nil, fmt.Errorf("%w: no client certificate", ErrNoCredentials)
	}
	id, err := VerifyPeer(info.State.PeerCertificates, a.roots(), x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	return &Caller{Identity: id, Method: MethodClientCertificate}, nil
}

// VerifyPeer verifies a peer's certificate chain (leaf first, as TLS presents it) against roots for the given
// usage, and returns the SPIFFE ID of the leaf.
func VerifyPeer(chain []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("client certificate: none presented")
	}
	if roots == nil {
		return "", errors.New("client certificate: no mesh roots to verify it against")
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, CurrentTime: time.Now(), KeyUsages: []x509.ExtKeyUsage{usage},
	}); err != nil {
		return "", fmt.Errorf("client certificate (serial %x) does not verify against the mesh roots: %w", leaf.SerialNumber, err)
	}
	if leaf.IsCA {
		return "", fmt.Errorf("client certificate (serial %x) is a CA certificate", leaf.SerialNumber)
	}
	return IdentityOf(leaf)
}

// IdentityOf returns the one SPIFFE URI SAN of a certificate.
func IdentityOf(cert *x509.Certificate) (string, error) {
	if len(cert.URIs) != 1 {
		return "", fmt.Errorf("certificate (serial %x) has %d URI SANs, want exactly one SPIFFE ID", cert.SerialNumber, len(cert.URIs))
	}
	id := cert.URIs[0].String()
	if err := ca.CheckSPIFFE(id); err != nil {
		return "", fmt.Errorf("certificate (serial %x): %w", cert.SerialNumber, err)
	}
	return id, nil
}
