// Package catest has helpers for testing the CA and its users: certificate signing requests, plugged-in CA
// hierarchies and a fake TokenReview endpoint on a client-go fake clientset. It is for tests only.
package catest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"
	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// CSROptions are what a test CSR asks for.
type CSROptions struct {
	CommonName string
	URIs       []string
	DNSNames   []string
	// Key signs the request; a new P-256 key when nil.
	Key crypto.Signer
}

// NewCSR returns a PEM certificate signing request and its key.
func NewCSR(t testing.TB, o CSROptions) ([]byte, crypto.Signer) {
	t.Helper()
	key := o.Key
	if key == nil {
		key = NewKey(t)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: o.CommonName}, DNSNames: o.DNSNames}
	for _, u := range o.URIs {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), key
}

// NewKey returns a P-256 key.
func NewKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// CorruptSignature returns the CSR with one bit of its signature flipped: it still parses, but its signature no
// longer verifies.
func CorruptSignature(t testing.TB, csrPEM []byte) []byte {
	t.Helper()
	block, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	der := slices.Clone(block.Bytes)
	// The signature is the last element of the DER: flip a bit in its last byte.
	if len(csr.Signature) == 0 {
		t.Fatal("CSR without signature")
	}
	der[len(der)-1] ^= 0x01
	if _, err := x509.ParseCertificateRequest(der); err != nil {
		t.Fatalf("corrupted CSR no longer parses: %v", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// ParseChain parses the PEM elements of a CA response.
func ParseChain(t testing.TB, chain []string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for i, p := range chain {
		certs, err := pemutil.ParseCertificateBundle([]byte(p))
		if err != nil {
			t.Fatalf("chain element %d: %v", i, err)
		}
		if len(certs) != 1 {
			t.Fatalf("chain element %d holds %d certificates, want one", i, len(certs))
		}
		out = append(out, certs[0])
	}
	return out
}

// Authority is a test CA certificate with its key.
type Authority struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// NewRoot returns a self-signed root, built with smallstep's templates.
func NewRoot(t testing.TB, org string, validity time.Duration) *Authority {
	t.Helper()
	return newAuthority(t, nil, org, time.Now().Add(-time.Minute), time.Now().Add(validity))
}

// Intermediate returns a CA certificate signed by a, valid from notBefore to notAfter.
func (a *Authority) Intermediate(t testing.TB, org string, notBefore, notAfter time.Time) *Authority {
	t.Helper()
	return newAuthority(t, a, org, notBefore, notAfter)
}

func newAuthority(t testing.TB, parent *Authority, org string, notBefore, notAfter time.Time) *Authority {
	t.Helper()
	key := NewKey(t)
	data := x509util.NewTemplateData()
	data.SetSubject(x509util.Subject{Organization: []string{org}, CommonName: org + " CA"})
	tmplText := x509util.DefaultIntermediateTemplate
	if parent == nil {
		tmplText = x509util.DefaultRootTemplate
	}
	// The default templates limit the path length; these authorities may be stacked.
	tmpl, err := x509util.NewCertificateFromX509(&x509.Certificate{PublicKey: key.Public()}, x509util.WithTemplate(tmplText, data))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.BasicConstraints = &x509util.BasicConstraints{IsCA: true, MaxPathLen: -1}
	tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
	c := tmpl.GetCertificate()
	issuer, signer := c, key
	if parent != nil {
		issuer, signer = parent.Cert, parent.Key
	}
	cert, err := x509util.CreateCertificate(c, issuer, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	return &Authority{Cert: cert, Key: key, CertPEM: PEM(cert), KeyPEM: KeyPEM(t, key)}
}

// Leaf returns a certificate for a SPIFFE identity signed by a, with a new key; the TLS chain is leaf, then
// the given intermediates.
func (a *Authority) Leaf(t testing.TB, identity string, validity time.Duration) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key := NewKey(t)
	data := x509util.NewTemplateData()
	data.SetSANs([]string{identity})
	tmpl, err := x509util.NewCertificateFromX509(&x509.Certificate{PublicKey: key.Public()}, x509util.WithTemplate(x509util.DefaultLeafTemplate, data))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(validity)
	cert, err := x509util.CreateCertificate(tmpl.GetCertificate(), a.Cert, key.Public(), a.Key)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// PEM encodes certificates.
func PEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// KeyPEM encodes a private key as PKCS#8.
func KeyPEM(t testing.TB, k crypto.Signer) []byte {
	t.Helper()
	b, err := pemutil.Serialize(k, pemutil.WithPKCS8(true))
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(b)
}

// Token is what the fake TokenReview knows about a token.
type Token struct {
	// User is the authenticated user, e.g. system:serviceaccount:default:productpage.
	User string
	// Audiences the token was issued for. As the API server does, a review succeeds when they meet the
	// audiences asked for, and then reports the ones in common.
	Audiences []string
	// Answer, when set, is returned as the review status as is (to play a misbehaving or legacy API server).
	Answer *authnv1.TokenReviewStatus
}

// TokenReviews is a fake TokenReview endpoint on a fake clientset.
type TokenReviews struct {
	mu      sync.Mutex
	tokens  map[string]Token
	err     error // every review fails with it when set (an API server outage)
	reviews int
}

// FakeTokenReviews installs a TokenReview reactor on cs answering for tokens; unknown tokens are not
// authenticated, as the API server answers for an expired or forged one.
func FakeTokenReviews(cs *fake.Clientset, tokens map[string]Token) *TokenReviews {
	tr := &TokenReviews{tokens: tokens}
	cs.PrependReactor("create", "tokenreviews", func(action k8stesting.Action) (bool, runtime.Object, error) {
		review := action.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		tr.mu.Lock()
		defer tr.mu.Unlock()
		tr.reviews++
		if tr.err != nil {
			return true, nil, tr.err
		}
		tok, ok := tr.tokens[review.Spec.Token]
		switch {
		case !ok:
			review.Status = authnv1.TokenReviewStatus{Error: "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}
		case tok.Answer != nil:
			review.Status = *tok.Answer
		default:
			common := tok.Audiences
			if len(review.Spec.Audiences) > 0 {
				common = nil
				for _, a := range review.Spec.Audiences {
					if slices.Contains(tok.Audiences, a) {
						common = append(common, a)
					}
				}
			}
			if len(common) == 0 {
				review.Status = authnv1.TokenReviewStatus{Error: "[invalid bearer token, token audiences " + quote(tok.Audiences) +
					" is invalid for the target audiences " + quote(review.Spec.Audiences) + "]"}
				break
			}
			review.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: common,
				User: authnv1.UserInfo{Username: tok.User, Groups: []string{"system:serviceaccounts", "system:authenticated"}}}
		}
		return true, review, nil
	})
	return tr
}

// SetError makes every review fail with err (nil: answer again).
func (tr *TokenReviews) SetError(err error) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.err = err
}

// Reviews is the number of reviews made.
func (tr *TokenReviews) Reviews() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.reviews
}

func quote(s []string) string {
	out := "["
	for i, v := range s {
		if i > 0 {
			out += " "
		}
		out += `"` + v + `"`
	}
	return out + "]"
}
