package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
)

// KeyCertBundle is the CA's key material: the signing certificate and its private key, the certificates between
// the signing certificate and the root (served after every leaf), and the trusted roots. It is immutable; the
// private key is never exposed outside this package.
type KeyCertBundle struct {
	cert *x509.Certificate
	key  crypto.Signer
	// chain is what follows a leaf in a response, root excluded: the signing certificate and the intermediates
	// above it, in order; empty when the signing certificate is itself the root.
	chain []*x509.Certificate
	// anchor is the root the chain ends at; roots are all trusted roots (anchor included), as distributed.
	anchor *x509.Certificate
	roots  []*x509.Certificate
	pool   *x509.CertPool

	chainPEM  []string
	anchorPEM string
	rootPEM   []byte
}

// NewKeyCertBundle validates PEM key material in Istio's cacerts layout and returns it as a bundle:
//   - certPEM (ca-cert.pem): the signing certificate; a CA with the certSign key usage, currently valid;
//   - keyPEM (ca-key.pem): its private key (PKCS#1, PKCS#8 or SEC 1), which must match the certificate;
//   - chainPEM (cert-chain.pem, optional): intermediates between the signing certificate and a root; it may
//     also contain the signing certificate and the root, as Istio's tooling writes it;
//   - rootPEM (root-cert.pem): the trusted roots; optional when the signing certificate is self-signed.
//
// The signing certificate must chain to one of the roots through chainPEM.
func NewKeyCertBundle(certPEM, keyPEM, chainPEM, rootPEM []byte) (*KeyCertBundle, error) {
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CACertFile, err)
	}
	cert := certs[0]
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAKeyFile, err)
	}
	if err := keyutil.VerifyPair(cert.PublicKey, key); err != nil {
		return nil, fmt.Errorf("%s does not belong to %s (%s): %w", CAKeyFile, CACertFile, describe(cert), err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("%s (%s) is not a CA certificate (basic constraints CA:TRUE missing)", CACertFile, describe(cert))
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("%s (%s) may not sign certificates (key usage certSign missing)", CACertFile, describe(cert))
	}
	now := time.Now()
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return nil, fmt.Errorf("%s (%s) is valid from %s to %s, not now", CACertFile, describe(cert),
			cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	}

	var roots []*x509.Certificate
	if len(bytes.TrimSpace(rootPEM)) > 0 {
		if roots, err = parseCerts(rootPEM); err != nil {
			return nil, fmt.Errorf("%s: %w", RootCertFile, err)
		}
	} else if selfSigned(cert) {
		roots = []*x509.Certificate{cert}
	} else {
		return nil, fmt.Errorf("%s is empty and %s (%s) is not self-signed: the root it chains to is needed", RootCertFile, CACertFile, describe(cert))
	}
	var intermediates []*x509.Certificate
	if len(bytes.TrimSpace(chainPEM)) > 0 {
		if intermediates, err = parseCerts(chainPEM); err != nil {
			return nil, fmt.Errorf("%s: %w", CertChainFile, err)
		}
	}

	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	ipool := x509.NewCertPool()
	for _, c := range intermediates {
		ipool.AddCert(c)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         pool,
		Intermediates: ipool,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, fmt.Errorf("%s (%s) does not chain to %s through %s: %w", CACertFile, describe(cert), RootCertFile, CertChainFile, err)
	}
	path := chains[0] // [cert, intermediates..., root]; just [cert] when cert is one of the roots
	b := &KeyCertBundle{
		cert:   cert,
		key:    key,
		chain:  path[:len(path)-1],
		anchor: path[len(path)-1],
		roots:  roots,
		pool:   pool,
	}
	for _, c := range b.chain {
		b.chainPEM = append(b.chainPEM, string(encodeCert(c)))
	}
	b.anchorPEM = string(encodeCert(b.anchor))
	for _, r := range roots {
		b.rootPEM = append(b.rootPEM, encodeCert(r)...)
	}
	return b, nil
}

// SigningCert is the certificate leaves are signed with.
func (b *KeyCertBundle) SigningCert() *x509.Certificate { return b.cert }

// Chain is what follows a leaf in a response, root excluded: the signing certificate and the intermediates
// above it; empty when the signing certificate is the root itself.
func (b *KeyCertBundle) Chain() []*x509.Certificate { return b.chain }

// Root is the root the signing certificate chains to.
func (b *KeyCertBundle) Root() *x509.Certificate { return b.anchor }

// Roots are every trusted root, as distributed in root-cert.pem.
func (b *KeyCertBundle) Roots() []*x509.Certificate { return b.roots }

// RootPool is a pool of Roots, for verifying peers. It must not be modified.
func (b *KeyCertBundle) RootPool() *x509.CertPool { return b.pool }

// RootPEM is the PEM of every trusted root, for distribution (root-cert.pem, the istio-ca-root-cert ConfigMap).
func (b *KeyCertBundle) RootPEM() []byte { return bytes.Clone(b.rootPEM) }

// RootExpiry is when the root the signing certificate chains to expires.
func (b *KeyCertBundle) RootExpiry() time.Time { return b.anchor.NotAfter }

// SelfSigned reports whether the signing certificate is a root itself (no intermediates).
func (b *KeyCertBundle) SelfSigned() bool { return len(b.chain) == 0 }

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

// parseCerts parses every CERTIFICATE block of a PEM bundle; there must be at least one and nothing else that
// looks like PEM but does not parse.
func parseCerts(data []byte) ([]*x509.Certificate, error) {
	if !bytes.Contains(data, []byte("-----BEGIN ")) {
		return nil, errors.New("no PEM data")
	}
	certs, err := pemutil.ParseCertificateBundle(data)
	if err != nil {
		return nil, fmt.Errorf("parsing certificates: %w", err)
	}
	return certs, nil
}

// parsePrivateKey reads the first PEM block holding a private key (skipping e.g. "EC PARAMETERS" that openssl
// writes first). Encrypted keys are refused: there is nobody to ask for a password. Errors never quote the key.
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM private key block")
		}
		if !strings.HasSuffix(block.Type, "PRIVATE KEY") {
			continue
		}
		if block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] == "4,ENCRYPTED" {
			return nil, errors.New("the private key is encrypted; give it unencrypted")
		}
		k, err := pemutil.Parse(pem.EncodeToMemory(block), pemutil.WithFilename(CAKeyFile))
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("a %T cannot sign", k)
		}
		return s, nil
	}
}

func encodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// encodeKey serializes a private key as PKCS#8 PEM, for persisting it; the bytes must only go to 0600 files or
// to the CA Secret.
func encodeKey(k crypto.Signer) ([]byte, error) {
	block, err := pemutil.Serialize(k, pemutil.WithPKCS8(true))
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}

func describe(c *x509.Certificate) string {
	s := c.Subject.String()
	if s == "" {
		s = "empty subject"
	}
	return fmt.Sprintf("subject %q, serial %x", s, c.SerialNumber)
}
