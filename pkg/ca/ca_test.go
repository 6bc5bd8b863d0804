package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/ca"
	"github.com/meshd/meshd/pkg/ca/catest"
)

const productpage = "spiffe://cluster.local/ns/default/sa/productpage"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newSelfSigned is a CA with a self-signed root in a fresh directory.
func newSelfSigned(t *testing.T, opts ca.Options) *ca.CA {
	t.Helper()
	if opts.SelfSignedDir == "" {
		opts.SelfSignedDir = filepath.Join(t.TempDir(), "ca")
	}
	opts.Logger = quiet()
	c, err := ca.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sign(t *testing.T, c *ca.CA, csr []byte, id string, ttl time.Duration) []*x509.Certificate {
	t.Helper()
	chain, err := c.Sign(csr, id, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return catest.ParseChain(t, chain)
}

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// checkWorkloadCert checks what every workload certificate must be.
func checkWorkloadCert(t *testing.T, leaf *x509.Certificate, id string) {
	t.Helper()
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id {
		t.Errorf("URI SANs %v, want exactly [%s]", leaf.URIs, id)
	}
	if len(leaf.DNSNames)+len(leaf.EmailAddresses)+len(leaf.IPAddresses) != 0 {
		t.Errorf("other SANs: DNS %v, email %v, IP %v; want none", leaf.DNSNames, leaf.EmailAddresses, leaf.IPAddresses)
	}
	if s := leaf.Subject.String(); s != "" {
		t.Errorf("subject %q, want empty", s)
	}
	for _, e := range leaf.Extensions {
		if e.Id.Equal(oidSAN) && !e.Critical {
			t.Error("SAN extension not critical with an empty subject (RFC 5280 4.2.1.6)")
		}
	}
	if want := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment; leaf.KeyUsage != want {
		t.Errorf("key usage %b, want digitalSignature|keyEncipherment (%b)", leaf.KeyUsage, want)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("extended key usage %v, want serverAuth, clientAuth", leaf.ExtKeyUsage)
	}
	if !leaf.BasicConstraintsValid || leaf.IsCA {
		t.Errorf("basic constraints valid=%v CA=%v, want a valid CA:FALSE", leaf.BasicConstraintsValid, leaf.IsCA)
	}
	if leaf.NotBefore.After(time.Now().Add(-30 * time.Second)) {
		t.Errorf("NotBefore %v is not backdated", leaf.NotBefore)
	}
}

// verify checks that chain (leaf first, root last) verifies against the CA's roots for both TLS usages and
// that its last element is the root.
func verify(t *testing.T, c *ca.CA, chain []*x509.Certificate) {
	t.Helper()
	inter := x509.NewCertPool()
	for _, ic := range chain[1 : len(chain)-1] {
		inter.AddCert(ic)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: c.Roots(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Fatalf("leaf does not verify for %v: %v", usage, err)
		}
	}
	if !chain[len(chain)-1].Equal(c.Bundle().Root()) {
		t.Fatalf("last chain element is %s, want the root", chain[len(chain)-1].Subject)
	}
}

func TestSignWorkloadCertificate(t *testing.T) {
	c := newSelfSigned(t, ca.Options{})
	csr, key := catest.NewCSR(t, catest.CSROptions{})
	chain := sign(t, c, csr, productpage, 0)
	if len(chain) != 2 {
		t.Fatalf("chain of %d certificates, want leaf and root", len(chain))
	}
	verify(t, c, chain)
	leaf := chain[0]
	checkWorkloadCert(t, leaf, productpage)
	if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Error("the certificate is not for the CSR's key")
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore) - ca.Backdate; got < 24*time.Hour-time.Minute || got > 24*time.Hour+time.Minute {
		t.Errorf("default validity %v, want 24h", got)
	}
}

func TestSignIgnoresRequestedNames(t *testing.T) {
	c := newSelfSigned(t, ca.Options{})
	csr, _ := catest.NewCSR(t, catest.CSROptions{
		CommonName: "istiod.istio-system.svc",
		URIs:       []string{"spiffe://cluster.local/ns/istio-system/sa/istiod", "spiffe://cluster.local/ns/default/sa/productpage"},
		DNSNames:   []string{"istiod.istio-system.svc", "*.default.svc.cluster.local"},
	})
	leaf := sign(t, c, csr, "spiffe://cluster.local/ns/shop/sa/cart", 0)[0]
	checkWorkloadCert(t, leaf, "spiffe://cluster.local/ns/shop/sa/cart")
}

func TestSignTTL(t *testing.T) {
	c := newSelfSigned(t, ca.Options{MaxTTL: 48 * time.Hour})
	csr, _ := catest.NewCSR(t, catest.CSROptions{})
	leaf := sign(t, c, csr, productpage, time.Hour)[0]
	if got := time.Until(leaf.NotAfter); got < 59*time.Minute || got > time.Hour {
		t.Errorf("1h certificate expires in %v", got)
	}
	leaf = sign(t, c, csr, productpage, 48*time.Hour)[0]
	if got := time.Until(leaf.NotAfter); got < 47*time.Hour {
		t.Errorf("the maximum TTL was not granted: expires in %v", got)
	}
	for _, ttl := range []time.Duration{48*time.Hour + time.Second, -time.Second} {
		chain, err := c.Sign(csr, productpage, ttl)
		if !errors.Is(err, ca.ErrInvalidTTL) || chain != nil {
			t.Errorf("TTL %v: %v, %d certificates; want ErrInvalidTTL and none", ttl, err, len(chain))
		}
	}
	_, err := c.Sign(csr, productpage, 49*time.Hour)
	if err == nil || !strings.Contains(err.Error(), "above the maximum 48h0m0s") {
		t.Errorf("error %q does not name the maximum", err)
	}
}

func TestSignNeverOutlivesTheCA(t *testing.T) {
	root := catest.NewRoot(t, "example.org", 24*time.Hour)
	inter := root.Intermediate(t, "cluster.local", time.Now().Add(-time.Minute), time.Now().Add(2*time.Hour))
	b, err := ca.NewKeyCertBundle(inter.CertPEM, inter.KeyPEM, nil, root.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.NewFromBundle(b, ca.Options{Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := catest.NewCSR(t, catest.CSROptions{})
	leaf := sign(t, c, csr, productpage, 24*time.Hour)[0]
	if !leaf.NotAfter.Equal(inter.Cert.NotAfter) {
		t.Errorf("leaf expires %v, want clamped to the intermediate's %v", leaf.NotAfter, inter.Cert.NotAfter)
	}
}

func TestSignRejectsBadRequests(t *testing.T) {
	c := newSelfSigned(t, ca.Options{})
	good, _ := catest.NewCSR(t, catest.CSROptions{})
	weakKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weak, _ := catest.NewCSR(t, catest.CSROptions{Key: weakKey})
	for _, tc := range []struct {
		name, want string
		csr        []byte
	}{
		{"empty", "empty", nil},
		{"garbage", "not PEM", []byte("this is not a certificate request")},
		{"wrong PEM type", `"CERTIFICATE"`, bytes.Replace(good, []byte("CERTIFICATE REQUEST"), []byte("CERTIFICATE"), 2)},
		{"DER in PEM is garbage", "parsing the request", []byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")},
		{"bad signature", "signature does not verify", catest.CorruptSignature(t, good)},
		{"two blocks", "more than one PEM block", append(slices.Clone(good), good...)},
		{"oversized", "more than the 65536 allowed", append(slices.Clone(good), bytes.Repeat([]byte("\n"), ca.MaxCSRBytes)...)},
		{"weak key", "RSA key of 1024 bits", weak},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain, err := c.Sign(tc.csr, productpage, 0)
			if !errors.Is(err, ca.ErrInvalidCSR) || chain != nil {
				t.Fatalf("got %v and %d certificates, want ErrInvalidCSR and none", err, len(chain))
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}

func TestSignRejectsNonSPIFFEIdentity(t *testing.T) {
	c := newSelfSigned(t, ca.Options{})
	csr, _ := catest.NewCSR(t, catest.CSROptions{})
	for _, id := range []string{"", "productpage", "https://cluster.local/ns/default/sa/x", "spiffe://cluster.local",
		"spiffe://cluster.local/", "spiffe://cluster.local:443/ns/a/sa/b", "spiffe://cluster.local/ns/a?x=y"} {
		if chain, err := c.Sign(csr, id, 0); err == nil || chain != nil {
			t.Errorf("identity %q: signed", id)
		}
	}
}

func TestSignServing(t *testing.T) {
	c := newSelfSigned(t, ca.Options{})
	names := ca.DefaultServingDNSNames("istiod", "istio-system", "cluster.local")
	cert, err := c.SignServing(names, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.Certificate) != 1 || cert.Leaf == nil || cert.PrivateKey == nil {
		t.Fatalf("serving certificate: %d certificates, leaf %v", len(cert.Certificate), cert.Leaf != nil)
	}
	if !slices.Equal(cert.Leaf.DNSNames, []string{"istiod.istio-system.svc", "istiod.istio-system.svc.cluster.local"}) || len(cert.Leaf.URIs) != 0 {
		t.Errorf("SANs DNS %v URI %v", cert.Leaf.DNSNames, cert.Leaf.URIs)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: c.Roots(), DNSName: "istiod.istio-system.svc"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SignServing([]string{"not a name"}, time.Hour); err == nil {
		t.Error("signed a serving certificate for a bad DNS name")
	}
}

func TestKeyTypes(t *testing.T) {
	for _, kt := range []ca.KeyType{ca.KeyECDSAP256, ca.KeyRSA2048} {
		t.Run(string(kt), func(t *testing.T) {
			c := newSelfSigned(t, ca.Options{KeyType: kt, TrustDomain: "example.org"})
			root := c.Bundle().Root()
			switch kt {
			case ca.KeyRSA2048:
				if k, ok := root.PublicKey.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 {
					t.Fatalf("root key %T, want RSA 2048", root.PublicKey)
				}
			default:
				if root.PublicKeyAlgorithm != x509.ECDSA {
					t.Fatalf("root key %v, want ECDSA", root.PublicKeyAlgorithm)
				}
			}
			if !slices.Equal(root.Subject.Organization, []string{"example.org"}) || !root.IsCA || root.KeyUsage&x509.KeyUsageCertSign == 0 {
				t.Fatalf("root subject %s CA %v usage %b", root.Subject, root.IsCA, root.KeyUsage)
			}
			if years := time.Until(root.NotAfter).Hours() / 24 / 365; years < 9.99 || years > 10.01 {
				t.Fatalf("root valid for %.2f years, want 10", years)
			}
			csr, _ := catest.NewCSR(t, catest.CSROptions{})
			verify(t, c, sign(t, c, csr, "spiffe://example.org/ns/a/sa/b", 0))
		})
	}
	if _, err := ca.ParseKeyType("DSA"); err == nil {
		t.Error("ParseKeyType accepted DSA")
	}
}

func TestSelfSignedRootPersistsInDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	first := newSelfSigned(t, ca.Options{SelfSignedDir: dir})
	if !strings.Contains(first.Source(), "generated now") {
		t.Fatalf("source %q, want a generated root", first.Source())
	}
	mode := func(p string) os.FileMode {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	if m := mode(dir); m != 0o700 {
		t.Errorf("directory mode %v, want 0700", m)
	}
	for _, f := range []string{ca.CACertFile, ca.CAKeyFile} {
		if m := mode(filepath.Join(dir, f)); m != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, m)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("directory holds %d entries, want the two files", len(entries))
	}

	// A restart loads the same root, and certificates issued before it still verify.
	csr, _ := catest.NewCSR(t, catest.CSROptions{})
	before := sign(t, first, csr, productpage, 0)
	second := newSelfSigned(t, ca.Options{SelfSignedDir: dir})
	if !bytes.Equal(first.RootPEM(), second.RootPEM()) {
		t.Fatal("the root changed across a restart")
	}
	if strings.Contains(second.Source(), "generated") {
		t.Fatalf("source %q after a restart", second.Source())
	}
	verify(t, second, before)

	t.Run("a key without its certificate is an interrupted first start", func(t *testing.T) {
		if err := os.Remove(filepath.Join(dir, ca.CACertFile)); err != nil {
			t.Fatal(err)
		}
		third := newSelfSigned(t, ca.Options{SelfSignedDir: dir})
		if bytes.Equal(third.RootPEM(), first.RootPEM()) {
			t.Fatal("no new root")
		}
	})
	t.Run("a certificate without its key is refused", func(t *testing.T) {
		if err := os.Remove(filepath.Join(dir, ca.CAKeyFile)); err != nil {
			t.Fatal(err)
		}
		_, err := ca.New(context.Background(), ca.Options{SelfSignedDir: dir, Logger: quiet()})
		if err == nil || !strings.Contains(err.Error(), ca.CAKeyFile) {
			t.Fatalf("got %v, want an error naming %s", err, ca.CAKeyFile)
		}
	})
	t.Run("a corrupt root is refused and left alone", func(t *testing.T) {
		d := filepath.Join(t.TempDir(), "ca")
		newSelfSigned(t, ca.Options{SelfSignedDir: d})
		p := filepath.Join(d, ca.CACertFile)
		if err := os.WriteFile(p, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := ca.New(context.Background(), ca.Options{SelfSignedDir: d, Logger: quiet()})
		if err == nil || !strings.Contains(err.Error(), "left untouched") {
			t.Fatalf("got %v", err)
		}
		if b, _ := os.ReadFile(p); !bytes.Contains(b, []byte("AAAA")) {
			t.Fatal("the corrupt root was replaced")
		}
	})
}

func TestNoKeyMaterial(t *testing.T) {
	_, err := ca.New(context.Background(), ca.Options{Logger: quiet()})
	if err == nil || !strings.Contains(err.Error(), "no key material") {
		t.Fatalf("got %v", err)
	}
}

func TestMaxBelowDefaultTTL(t *testing.T) {
	_, err := ca.New(context.Background(), ca.Options{SelfSignedDir: t.TempDir(), MaxTTL: time.Hour, Logger: quiet()})
	if err == nil {
		t.Fatal("a maximum TTL below the 24h default was accepted")
	}
}
