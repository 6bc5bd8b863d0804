// Package ca is meshd's certificate authority: its key material (plugged-in certificates or a self-signed root
// persisted in Kubernetes or a directory), and the signing of workload certificates (X.509 SVIDs carrying one
// SPIFFE URI) and of istiod's own serving certificate. Certificates are built and signed with smallstep's
// x509util; the private keys are generated in this process and never leave it, except the CA key itself, which is
// persisted only in the CA Secret or in 0600 files of a 0700 directory.
//
// The caller authentication lives in ca/authn, the gRPC service in ca/server and the root distribution in
// ca/rootcert.
package ca

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/x509util"
	"k8s.io/client-go/kubernetes"
)

// Names of Istio's key material, kept for compatibility: the files of a plugged-in cacerts directory and the
// keys of the cacerts and istio-ca-secret Secrets.
const (
	CACertFile    = "ca-cert.pem"
	CAKeyFile     = "ca-key.pem"
	CertChainFile = "cert-chain.pem"
	RootCertFile  = "root-cert.pem"

	// PluggedSecretName is the Secret an operator creates with their own CA (the four files above).
	PluggedSecretName = "cacerts"
	// SelfSignedSecretName is the Secret holding the self-signed root (ca-cert.pem, ca-key.pem).
	SelfSignedSecretName = "istio-ca-secret"
	// SelfSignedSecretType is the Secret type istiod gives istio-ca-secret.
	SelfSignedSecretType = "istio.io/ca-root"
)

// Defaults, Istio's where Istio has one.
const (
	DefaultTrustDomain = "cluster.local"
	DefaultNamespace   = "istio-system"
	// DefaultWorkloadTTL is the validity of a workload certificate when the request names none
	// (Istio's DEFAULT_WORKLOAD_CERT_TTL).
	DefaultWorkloadTTL = 24 * time.Hour
	// DefaultMaxWorkloadTTL is the longest validity a request may ask for (Istio's MAX_WORKLOAD_CERT_TTL);
	// longer requests are refused, as istiod does.
	DefaultMaxWorkloadTTL = 90 * 24 * time.Hour
	// DefaultRootTTL is the validity of a generated self-signed root (Istio's CITADEL_SELF_SIGNED_CA_CERT_TTL).
	DefaultRootTTL = 10 * 365 * 24 * time.Hour
	// DefaultServingTTL is the validity of istiod's own serving certificate; ServingCert renews it at 80%.
	DefaultServingTTL = 24 * time.Hour
	// Backdate is how far NotBefore is set in the past, so that a peer whose clock is a little behind accepts
	// a certificate it receives at once.
	Backdate = time.Minute
	// MaxCSRBytes bounds the PEM of a certificate signing request; real ones are around 1 KiB.
	MaxCSRBytes = 64 << 10
)

// KeyType is the key algorithm of a generated self-signed root.
type KeyType string

const (
	// KeyECDSAP256 is the default: as strong as RSA 3072, generated in microseconds rather than up to a
	// second, and with signatures a fifth the size in every handshake. Envoy, grpc-go and Go verify it.
	KeyECDSAP256 KeyType = "ECDSA-P256"
	// KeyRSA2048 is what istiod generates; choose it when something in the mesh only handles RSA.
	KeyRSA2048 KeyType = "RSA-2048"
)

// ParseKeyType reads a key type name (ECDSA-P256, RSA-2048; case-insensitive; "" is the default).
func ParseKeyType(s string) (KeyType, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "", "ECDSA-P256", "ECDSA", "EC", "P256":
		return KeyECDSAP256, nil
	case "RSA-2048", "RSA":
		return KeyRSA2048, nil
	}
	return "", fmt.Errorf("unknown CA key type %q (want %s or %s)", s, KeyECDSAP256, KeyRSA2048)
}

func (k KeyType) generate() (crypto.Signer, error) {
	switch k {
	case KeyECDSAP256, "":
		return keyutil.GenerateSigner("EC", "P-256", 0)
	case KeyRSA2048:
		return keyutil.GenerateSigner("RSA", "", 2048)
	}
	return nil, fmt.Errorf("unknown CA key type %q", string(k))
}

// Errors Sign wraps, so that callers can tell the requester's mistakes from the CA's.
var (
	// ErrInvalidCSR: the request does not parse, its signature does not verify, or its key is unacceptable.
	ErrInvalidCSR = errors.New("invalid certificate signing request")
	// ErrInvalidTTL: the requested validity is negative or above the maximum.
	ErrInvalidTTL = errors.New("invalid certificate validity")
)

// Options configure a CA. Zero values take the defaults.
type Options struct {
	// TrustDomain is the mesh trust domain (MeshConfig trustDomain); the organization of a generated root.
	TrustDomain string
	// Client, when set, is the Kubernetes mode: the Secret cacerts is used when it exists, else the
	// self-signed root lives in the Secret istio-ca-secret (both in Namespace).
	Client kubernetes.Interface
	// Namespace of the CA Secrets: istiod's namespace, istio-system by default.
	Namespace string
	// CACertsDir is a plugged-in certs directory (istiod mounts cacerts at /etc/cacerts). It wins over
	// everything else when it holds ca-key.pem; an empty or missing directory is skipped.
	CACertsDir string
	// SelfSignedDir, in file mode (no Client), is the directory (0700) keeping the self-signed root across
	// restarts, files 0600.
	SelfSignedDir string
	// KeyType of a generated root; RootTTL its validity.
	KeyType KeyType
	RootTTL time.Duration
	// DefaultTTL is the validity of a workload certificate when the request names none; MaxTTL the longest
	// one may ask for.
	DefaultTTL time.Duration
	MaxTTL     time.Duration
	Logger     *slog.Logger
}

func (o *Options) defaults() {
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.KeyType == "" {
		o.KeyType = KeyECDSAP256
	}
	if o.RootTTL <= 0 {
		o.RootTTL = DefaultRootTTL
	}
	if o.DefaultTTL <= 0 {
		o.DefaultTTL = DefaultWorkloadTTL
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = DefaultMaxWorkloadTTL
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// CA signs certificates with its KeyCertBundle. It is safe for concurrent use.
type CA struct {
	opts   Options
	log    *slog.Logger
	source string
	bundle atomic.Pointer[KeyCertBundle]
}

// New loads or creates the key material, in istiod's order:
//  1. plugged-in certs from CACertsDir, when it holds ca-key.pem;
//  2. with a Kubernetes client, plugged-in certs from the Secret cacerts;
//  3. with a Kubernetes client, the self-signed root of the Secret istio-ca-secret, generated and stored on
//     first start; a replica that loses the race to create it loads the winner's;
//  4. without one, the self-signed root of SelfSignedDir, generated and stored on first start.
//
// Invalid key material is an error, never a reason to fall through to the next source: replacing a root
// silently would break every workload that trusts it.
func New(ctx context.Context, opts Options) (*CA, error) {
	opts.defaults()
	if opts.MaxTTL < opts.DefaultTTL {
		return nil, fmt.Errorf("CA: maximum workload certificate TTL %s is below the default %s", opts.MaxTTL, opts.DefaultTTL)
	}
	var (
		b      *KeyCertBundle
		source string
		found  bool
		err    error
	)
	if opts.CACertsDir != "" {
		b, found, err = loadPluggedDir(opts.CACertsDir)
		if err != nil {
			return nil, err
		}
		source = "plugged-in certs directory " + opts.CACertsDir
	}
	if !found && opts.Client != nil {
		b, found, err = loadPluggedSecret(ctx, opts.Client, opts.Namespace)
		if err != nil {
			return nil, err
		}
		source = "plugged-in Secret " + opts.Namespace + "/" + PluggedSecretName
	}
	if !found && opts.Client != nil {
		var created bool
		b, created, err = selfSignedSecret(ctx, opts)
		if err != nil {
			return nil, err
		}
		found, source = true, "self-signed root in Secret "+opts.Namespace+"/"+SelfSignedSecretName
		if created {
			source += " (generated now)"
		}
	}
	if !found && opts.SelfSignedDir != "" {
		var created bool
		b, created, err = selfSignedDir(opts)
		if err != nil {
			return nil, err
		}
		found, source = true, "self-signed root in directory "+opts.SelfSignedDir
		if created {
			source += " (generated now)"
		}
	}
	if !found {
		return nil, errors.New("CA: no key material: give a Kubernetes client, a plugged-in certs directory holding " +
			CAKeyFile + ", or a directory for the self-signed root")
	}
	c, err := NewFromBundle(b, opts)
	if err != nil {
		return nil, err
	}
	c.source = source
	c.log.Info("CA key material loaded", "source", source, "root", b.Root().Subject.String(),
		"rootSHA256", fingerprint(b.Root()), "rootExpires", b.RootExpiry().UTC().Format(time.RFC3339),
		"intermediates", len(b.Chain()), "trustDomain", opts.TrustDomain)
	return c, nil
}

// NewFromBundle returns a CA signing with b; the key material sources of New are skipped.
func NewFromBundle(b *KeyCertBundle, opts Options) (*CA, error) {
	if b == nil {
		return nil, errors.New("CA: no key material")
	}
	opts.defaults()
	if opts.MaxTTL < opts.DefaultTTL {
		return nil, fmt.Errorf("CA: maximum workload certificate TTL %s is below the default %s", opts.MaxTTL, opts.DefaultTTL)
	}
	c := &CA{opts: opts, log: opts.Logger.With("component", "ca"), source: "bundle"}
	c.bundle.Store(b)
	return c, nil
}

// Bundle is the current key material.
func (c *CA) Bundle() *KeyCertBundle { return c.bundle.Load() }

// Source names where the key material came from, for logs and debug pages.
func (c *CA) Source() string { return c.source }

// TrustDomain is the mesh trust domain the CA was configured with.
func (c *CA) TrustDomain() string { return c.opts.TrustDomain }

// RootPEM is the PEM of every trusted root, for distribution.
func (c *CA) RootPEM() []byte { return c.Bundle().RootPEM() }

// Roots is a pool of the trusted roots, for verifying peers. It must not be modified.
func (c *CA) Roots() *x509.CertPool { return c.Bundle().RootPool() }

// RootExpiry is when the root the CA chains to expires.
func (c *CA) RootExpiry() time.Time { return c.Bundle().RootExpiry() }

// leafTemplate is the certificate every leaf gets, whatever the request asked: no subject (so the SAN extension
// is critical, as RFC 5280 wants), only the names the CA chose, and the usages of an mTLS peer.
const leafTemplate = `{
	"uris": {{ toJson .URIs }},
	"dnsNames": {{ toJson .DNSNames }},
	"keyUsage": ["digitalSignature", "keyEncipherment"],
	"extKeyUsage": ["serverAuth", "clientAuth"],
	"basicConstraints": {"isCA": false}
}`

// Sign issues a workload certificate for identity (a SPIFFE URI the caller authenticated as) to the public key
// of csrPEM, valid for ttl (0: the default; above the maximum: refused with ErrInvalidTTL, as istiod does). The
// CSR's signature is verified; its subject and names are ignored: the certificate carries exactly one URI SAN,
// identity. The result is the chain to send back, one PEM per element: leaf, intermediates, root last.
//
// NotBefore is backdated by Backdate; NotAfter never passes the expiry of the CA's own chain.
func (c *CA) Sign(csrPEM []byte, identity string, ttl time.Duration) ([]string, error) {
	if err := CheckSPIFFE(identity); err != nil {
		return nil, err
	}
	switch {
	case ttl == 0:
		ttl = c.opts.DefaultTTL
	case ttl < 0:
		return nil, fmt.Errorf("%w: %s is negative", ErrInvalidTTL, ttl)
	case ttl > c.opts.MaxTTL:
		return nil, fmt.Errorf("%w: requested %s is above the maximum %s", ErrInvalidTTL, ttl, c.opts.MaxTTL)
	}
	csr, err := ParseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	data := x509util.NewTemplateData()
	data.Set("URIs", []string{identity})
	leaf, err := c.sign(csr, data, ttl)
	if err != nil {
		return nil, err
	}
	b := c.Bundle()
	out := make([]string, 0, len(b.chainPEM)+2)
	out = append(out, string(encodeCert(leaf)))
	out = append(out, b.chainPEM...)
	return append(out, b.anchorPEM), nil
}

// SignServing issues istiod's own serving certificate for dnsNames, with a P-256 key generated here; the
// returned certificate holds the leaf and the intermediates (not the root), ready for tls.Config.
func (c *CA) SignServing(dnsNames []string, ttl time.Duration) (*tls.Certificate, error) {
	if len(dnsNames) == 0 {
		return nil, errors.New("serving certificate: no DNS names")
	}
	for _, n := range dnsNames {
		if !validDNSName(n) {
			return nil, fmt.Errorf("serving certificate: %q is not a DNS name", n)
		}
	}
	if ttl <= 0 {
		ttl = DefaultServingTTL
	}
	key, err := KeyECDSAP256.generate()
	if err != nil {
		return nil, fmt.Errorf("serving certificate: generating its key: %w", err)
	}
	// No CSR: the key is ours. x509util builds the request from this stub, the template decides the rest.
	csr := &x509.CertificateRequest{PublicKey: key.Public(), PublicKeyAlgorithm: x509.ECDSA}
	data := x509util.NewTemplateData()
	data.Set("DNSNames", dnsNames)
	leaf, err := c.sign(csr, data, ttl)
	if err != nil {
		return nil, fmt.Errorf("serving certificate for %v: %w", dnsNames, err)
	}
	out := &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	for _, ic := range c.Bundle().chain {
		out.Certificate = append(out.Certificate, ic.Raw)
	}
	return out, nil
}

// sign applies leafTemplate to the request with data and signs it with the current bundle.
func (c *CA) sign(csr *x509.CertificateRequest, data x509util.TemplateData, ttl time.Duration) (*x509.Certificate, error) {
	b := c.Bundle()
	var tmpl *x509util.Certificate
	var err error
	if csr.Raw != nil {
		tmpl, err = x509util.NewCertificate(csr, x509util.WithTemplate(leafTemplate, data))
	} else {
		tmpl, err = x509util.NewCertificateFromX509(&x509.Certificate{PublicKey: csr.PublicKey, PublicKeyAlgorithm: csr.PublicKeyAlgorithm},
			x509util.WithTemplate(leafTemplate, data))
	}
	if err != nil {
		return nil, fmt.Errorf("building the certificate: %w", err)
	}
	now := time.Now()
	tmpl.NotBefore = now.Add(-Backdate)
	tmpl.NotAfter = now.Add(ttl)
	if limit := b.validUntil(); tmpl.NotAfter.After(limit) {
		tmpl.NotAfter = limit
	}
	if !tmpl.NotAfter.After(now) {
		return nil, fmt.Errorf("the CA chain expired on %s", tmpl.NotAfter.UTC().Format(time.RFC3339))
	}
	leaf, err := x509util.CreateCertificate(tmpl.GetCertificate(), b.cert, csr.PublicKey, b.key)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate: %w", err)
	}
	return leaf, nil
}

// validUntil is the earliest expiry in the chain above a leaf.
func (b *KeyCertBundle) validUntil() time.Time {
	t := b.anchor.NotAfter
	for _, c := range append([]*x509.Certificate{b.cert}, b.chain...) {
		if c.NotAfter.Before(t) {
			t = c.NotAfter
		}
	}
	return t
}

// CheckSPIFFE verifies that id is a SPIFFE ID: spiffe://<trust domain>/<path>, nothing else.
func CheckSPIFFE(id string) error {
	u, err := url.Parse(id)
	if err != nil {
		return fmt.Errorf("identity %q is not a URI: %w", id, err)
	}
	if u.Scheme != "spiffe" || u.Host == "" || u.Port() != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" ||
		len(u.Path) < 2 || u.Opaque != "" {
		return fmt.Errorf("identity %q is not a SPIFFE ID (spiffe://<trust domain>/<path>)", id)
	}
	return nil
}

// ParseCSR decodes a PEM certificate signing request, verifies its signature and checks its public key: RSA of
// 2048 to 8192 bits, ECDSA on P-256, P-384 or P-521, or Ed25519. Every failure wraps ErrInvalidCSR.
func ParseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	if len(csrPEM) > MaxCSRBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than the %d allowed", ErrInvalidCSR, len(csrPEM), MaxCSRBytes)
	}
	csr, err := decodeCSR(csrPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: its signature does not verify with its own public key: %v", ErrInvalidCSR, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	return csr, nil
}

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
