// Package secrets keeps the workload's certificate: it generates the private key in this process (the key
// never leaves the pod: only a CSR goes to the CA), has the CA sign it, renews it before it expires, and hands
// the result to the SDS server and, for proxyless gRPC, to files. This is the part of Istio's pilot-agent known
// as the secret cache.
package secrets

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Names of the secrets Envoy asks for over SDS, as Istio's agent serves them.
const (
	// WorkloadCertName is the workload's certificate chain and private key.
	WorkloadCertName = "default"
	// RootCertName is the mesh root the workload's peers are verified against.
	RootCertName = "ROOTCA"
)

// Defaults, Istio's.
const (
	// DefaultTTL is the validity asked for (SECRET_TTL).
	DefaultTTL = 24 * time.Hour
	// DefaultGraceRatio is the fraction of the lifetime left when the certificate is renewed
	// (SECRET_GRACE_PERIOD_RATIO).
	DefaultGraceRatio = 0.5
	// DefaultRetryInitial and DefaultRetryMax bound the backoff between failed renewals.
	DefaultRetryInitial = time.Second
	DefaultRetryMax     = 30 * time.Second
	// DefaultAttemptTimeout bounds one call to the CA made by Run, so that a CA that accepts the connection
	// but never answers does not stall renewal.
	DefaultAttemptTimeout = 30 * time.Second
	// DefaultServiceAccount is used when none is configured: the one Kubernetes gives a pod that names none.
	DefaultServiceAccount = "default"
)

// minRenewInterval keeps a certificate in use at least this long, so that a CA issuing certificates that are
// already due for renewal (a clock skew, a root about to expire) does not make Run call it in a tight loop.
const minRenewInterval = time.Second

// Key types.
const (
	KeyEC  = "EC"
	KeyRSA = "RSA"
)

// ErrUnknownSecret is returned by Get for a name other than WorkloadCertName and RootCertName.
var ErrUnknownSecret = errors.New("unknown secret")

// Signer has the CA sign a CSR; *caclient.Client is one. It returns the chain, leaf first, root last.
type Signer interface {
	Sign(ctx context.Context, csrPEM []byte, ttl time.Duration) ([]string, error)
}

// Options configure a Manager.
type Options struct {
	Signer Signer
	// TrustDomain, Namespace and ServiceAccount make the identity the CSR asks for,
	// spiffe://TrustDomain/ns/Namespace/sa/ServiceAccount. The CA decides the identity from the caller's
	// credentials anyway; a difference is logged.
	TrustDomain, Namespace, ServiceAccount string
	// TTL asked for; DefaultTTL when zero.
	TTL time.Duration
	// GraceRatio is the fraction of the lifetime that remains when the certificate is renewed; DefaultGraceRatio
	// when zero.
	GraceRatio float64
	// KeyType is KeyEC (P-256, the default) or KeyRSA (2048 bits).
	KeyType string
	// OutputDir, when set, receives key.pem (0600), cert-chain.pem and root-cert.pem (0644), replaced
	// atomically on every renewal; proxyless gRPC's file_watcher reads them.
	OutputDir string
	// RetryInitial and RetryMax bound the exponential backoff after a failure.
	RetryInitial, RetryMax time.Duration
	// AttemptTimeout bounds one renewal attempt of Run; DefaultAttemptTimeout when zero.
	AttemptTimeout time.Duration
	Logger         *slog.Logger
	// Now is the clock, time.Now when nil.
	Now func() time.Time
}

// Item is a secret as served. Items are shared: they must not be modified.
type Item struct {
	Name string
	// CertChainPEM is the chain the CA returned, leaf first, root last (only in WorkloadCertName).
	CertChainPEM []byte
	// PrivateKeyPEM is the PKCS#8 key of the leaf (only in WorkloadCertName).
	PrivateKeyPEM []byte
	// RootPEM is the root: the last certificate of the CA's chain.
	RootPEM []byte
	// NotAfter is the expiry of the leaf (WorkloadCertName) or of the root (RootCertName).
	NotAfter time.Time
	// Version changes when the content does: the leaf's serial number, or a digest of the root.
	Version string
}

// issued is one certificate from the CA with everything derived from it.
type issued struct {
	cert, root *Item
	identity   string
	serial     string
	// renewAt is when it is due for renewal: NotAfter minus GraceRatio of its lifetime, the lifetime counted
	// from when it was asked for (the CA backdates NotBefore, which would shorten the usable part).
	renewAt time.Time
}

// Manager holds the workload certificate. It is safe for concurrent use.
type Manager struct {
	opts     Options
	log      *slog.Logger
	identity string
	// fetching holds one token: one CSR at a time, waited for with a context (a mutex cannot be).
	fetching chan struct{}

	mu       sync.Mutex
	cur      *issued
	filesErr error
	subs     map[int]chan struct{}
	nextSub  int
}

// NewManager checks opts; nothing is fetched until Get or Run.
func NewManager(opts Options) (*Manager, error) {
	if opts.Signer == nil {
		return nil, errors.New("secrets: no signer (CA client)")
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	if opts.Namespace == "" {
		return nil, errors.New("secrets: no namespace for the workload identity")
	}
	if opts.ServiceAccount == "" {
		opts.ServiceAccount = DefaultServiceAccount
	}
	switch {
	case opts.TTL == 0:
		opts.TTL = DefaultTTL
	case opts.TTL < time.Second:
		return nil, fmt.Errorf("secrets: TTL %s is below the CA's one-second resolution", opts.TTL)
	}
	switch {
	case opts.GraceRatio == 0:
		opts.GraceRatio = DefaultGraceRatio
	case opts.GraceRatio < 0 || opts.GraceRatio >= 1:
		return nil, fmt.Errorf("secrets: grace period ratio %v is not between 0 and 1", opts.GraceRatio)
	}
	switch strings.ToUpper(opts.KeyType) {
	case "", KeyEC, "ECDSA":
		opts.KeyType = KeyEC
	case KeyRSA:
		opts.KeyType = KeyRSA
	default:
		return nil, fmt.Errorf("secrets: unknown key type %q (want %s or %s)", opts.KeyType, KeyEC, KeyRSA)
	}
	if opts.RetryInitial <= 0 {
		opts.RetryInitial = DefaultRetryInitial
	}
	if opts.RetryMax < opts.RetryInitial {
		opts.RetryMax = max(DefaultRetryMax, opts.RetryInitial)
	}
	if opts.AttemptTimeout <= 0 {
		opts.AttemptTimeout = DefaultAttemptTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	identity := "spiffe://" + opts.TrustDomain + "/ns/" + opts.Namespace + "/sa/" + opts.ServiceAccount
	if _, err := url.Parse(identity); err != nil {
		return nil, fmt.Errorf("secrets: identity %q: %w", identity, err)
	}
	return &Manager{
		opts:     opts,
		log:      opts.Logger.With("component", "secrets", "identity", identity),
		identity: identity,
		fetching: make(chan struct{}, 1),
		subs:     map[int]chan struct{}{},
	}, nil
}

// Get returns the secret name (WorkloadCertName or RootCertName). The first call, or one after the certificate
// expired, has the CA issue one, retrying transient failures (the CA unreachable) with backoff until ctx is
// done; a refusal (bad credentials) is returned at once. Later calls return the cached certificate.
func (m *Manager) Get(ctx context.Context, name string) (*Item, error) {
	if name != WorkloadCertName && name != RootCertName {
		return nil, fmt.Errorf("%w %q: the agent serves %q and %q", ErrUnknownSecret, name, WorkloadCertName, RootCertName)
	}
	st, err := m.ensure(ctx)
	if err != nil {
		return nil, err
	}
	if name == RootCertName {
		return st.root, nil
	}
	return st.cert, nil
}

// Current is the workload certificate in use, nil before the first is issued.
func (m *Manager) Current() *Item {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil {
		return nil
	}
	return m.cur.cert
}

// Subscribe returns a channel that receives a value after every new certificate (the first and each renewal);
// notifications coalesce, so a slow reader sees at least the latest. The function unsubscribes.
func (m *Manager) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	id := m.nextSub
	m.nextSub++
	m.subs[id] = ch
	m.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			m.mu.Lock()
			delete(m.subs, id)
			m.mu.Unlock()
		})
	}
}

// Run fetches the first certificate now (proxyless gRPC reads files, nobody asks over SDS) and then renews
// each one when GraceRatio of its lifetime remains, until ctx is done. A failed renewal is retried with
// exponential backoff while the current certificate stays in use.
func (m *Manager) Run(ctx context.Context) {
	bo := newBackoff(m.opts.RetryInitial, m.opts.RetryMax)
	for {
		if d := m.untilRenewal(); d > 0 {
			if !sleep(ctx, d) {
				return
			}
			continue
		}
		err := m.renewIfDue(ctx)
		if err == nil {
			bo.reset()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		retry := bo.next()
		if cur := m.Current(); cur != nil && m.opts.Now().Before(cur.NotAfter) {
			m.log.Warn("renewing the workload certificate failed; the current one stays in use", "expires", cur.NotAfter,
				"retryIn", retry, "error", err)
		} else {
			m.log.Error("no valid workload certificate: issuing one failed", "retryIn", retry, "error", err)
		}
		if !sleep(ctx, retry) {
			return
		}
	}
}

// untilRenewal is how long until the current certificate is due: zero when there is none, or when the files
// could not be written (a new certificate gives them another chance).
func (m *Manager) untilRenewal() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil || (m.opts.OutputDir != "" && m.filesErr != nil) {
		return 0
	}
	return max(m.cur.renewAt.Sub(m.opts.Now()), 0)
}

// renewIfDue renews the certificate unless a concurrent Get replaced it while this waited for its turn.
func (m *Manager) renewIfDue(ctx context.Context) error {
	if err := m.acquire(ctx); err != nil {
		return err
	}
	defer m.release()
	if m.untilRenewal() > 0 {
		return nil
	}
	actx, cancel := context.WithTimeout(ctx, m.opts.AttemptTimeout)
	defer cancel()
	if _, err := m.renew(actx); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.opts.OutputDir != "" && m.filesErr != nil {
		return m.filesErr
	}
	return nil
}

// valid is the current certificate unless there is none or it expired.
func (m *Manager) valid() *issued {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil || !m.opts.Now().Before(m.cur.cert.NotAfter) {
		return nil
	}
	return m.cur
}

func (m *Manager) ensure(ctx context.Context) (*issued, error) {
	if st := m.valid(); st != nil {
		return st, nil
	}
	if err := m.acquire(ctx); err != nil {
		return nil, fmt.Errorf("workload certificate for %s: waiting for the request in progress: %w", m.identity, err)
	}
	defer m.release()
	if st := m.valid(); st != nil {
		return st, nil
	}
	bo := newBackoff(m.opts.RetryInitial, m.opts.RetryMax)
	// cause is the last failure that says why the CA could not be reached: an attempt cut short by ctx's own
	// deadline would only repeat the deadline.
	var cause error
	for {
		st, err := m.renew(ctx)
		if err == nil {
			return st, nil
		}
		if cause == nil || ctx.Err() == nil {
			cause = err
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("workload certificate for %s: %w; last attempt: %w", m.identity, ctx.Err(), cause)
		}
		if !transient(err) {
			return nil, fmt.Errorf("workload certificate for %s: %w", m.identity, err)
		}
		retry := bo.next()
		m.log.Warn("issuing the workload certificate failed", "retryIn", retry, "error", err)
		if !sleep(ctx, retry) {
			return nil, fmt.Errorf("workload certificate for %s: %w; last attempt: %w", m.identity, ctx.Err(), cause)
		}
	}
}

func (m *Manager) acquire(ctx context.Context) error {
	select {
	case m.fetching <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Manager) release() { <-m.fetching }

// transient tells the failures worth retrying at once (the CA unreachable, overloaded or failing) from
// refusals that will be repeated until something changes (credentials, CSR, TTL).
func transient(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.Unauthenticated, codes.PermissionDenied, codes.FailedPrecondition,
		codes.Unimplemented, codes.OutOfRange:
		return false
	}
	return true
}

// renew has a new certificate issued and puts it in use. The caller holds the fetching token.
func (m *Manager) renew(ctx context.Context) (*issued, error) {
	st, err := m.issue(ctx)
	if err != nil {
		return nil, err
	}
	var filesErr error
	if m.opts.OutputDir != "" {
		// Before the swap, so that whoever is notified finds the files current too. A failure does not keep
		// the certificate from Envoy: it is logged, and Run tries again with the next one.
		if filesErr = writeFiles(m.opts.OutputDir, st); filesErr != nil {
			m.log.Error("writing the certificate files failed", "dir", m.opts.OutputDir, "error", filesErr)
		}
	}
	m.mu.Lock()
	prev := m.cur
	m.cur, m.filesErr = st, filesErr
	for _, ch := range m.subs {
		select {
		case ch <- struct{}{}:
		default: // a notification is pending already
		}
	}
	m.mu.Unlock()
	args := []any{"serial", st.serial, "expires", st.cert.NotAfter, "renewAt", st.renewAt}
	if prev != nil && prev.root.Version != st.root.Version {
		args = append(args, "rootChanged", true)
	}
	m.log.Info("workload certificate issued", args...)
	return st, nil
}

// issue makes a key and a CSR, has the CA sign it and checks what comes back.
func (m *Manager) issue(ctx context.Context) (*issued, error) {
	key, err := m.newKey()
	if err != nil {
		return nil, fmt.Errorf("generating the %s private key: %w", m.opts.KeyType, err)
	}
	csrPEM, err := m.csr(key)
	if err != nil {
		return nil, err
	}
	askedAt := m.opts.Now()
	chain, err := m.opts.Signer.Sign(ctx, csrPEM, m.opts.TTL)
	if err != nil {
		return nil, err
	}
	certs, err := parseChain(chain)
	if err != nil {
		return nil, fmt.Errorf("the CA's answer: %w", err)
	}
	if len(certs) < 2 {
		return nil, errors.New("the CA's answer holds no root after the leaf")
	}
	leaf, root := certs[0], certs[len(certs)-1]
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("the CA's certificate is not for the key of the request")
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range certs[1 : len(certs)-1] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: m.opts.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("the CA's certificate does not verify against the root it sent: %w", err)
	}
	identity := ""
	if len(leaf.URIs) > 0 {
		identity = leaf.URIs[0].String()
	}
	if identity != m.identity {
		m.log.Warn("the CA issued another identity than asked for; it is used", "issued", identity)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the private key: %w", err)
	}
	var chainPEM []byte
	for _, c := range certs {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})
	rootSum := sha256.Sum256(root.Raw)
	serial := leaf.SerialNumber.Text(16)
	lifetime := leaf.NotAfter.Sub(askedAt)
	renewAt := leaf.NotAfter.Add(-time.Duration(m.opts.GraceRatio * float64(lifetime)))
	if floor := askedAt.Add(minRenewInterval); renewAt.Before(floor) {
		renewAt = floor
	}
	return &issued{
		cert: &Item{
			Name:          WorkloadCertName,
			CertChainPEM:  chainPEM,
			PrivateKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
			RootPEM:       rootPEM,
			NotAfter:      leaf.NotAfter,
			Version:       serial,
		},
		root: &Item{
			Name:     RootCertName,
			RootPEM:  rootPEM,
			NotAfter: root.NotAfter,
			Version:  hex.EncodeToString(rootSum[:8]),
		},
		identity: identity,
		serial:   serial,
		renewAt:  renewAt,
	}, nil
}

func (m *Manager) newKey() (crypto.Signer, error) {
	if m.opts.KeyType == KeyRSA {
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// csr asks for the identity as a URI SAN, as Istio's agent does; the CA ignores the CSR's names.
func (m *Manager) csr(key crypto.Signer) ([]byte, error) {
	u, err := url.Parse(m.identity)
	if err != nil {
		return nil, fmt.Errorf("identity %q: %w", m.identity, err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, fmt.Errorf("creating the CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// parseChain reads the CA's chain; an element may hold more than one certificate.
func parseChain(chain []string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for i, elem := range chain {
		rest := []byte(elem)
		n := 0
		for {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("chain element %d: %w", i, err)
			}
			out = append(out, c)
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("chain element %d holds no PEM certificate", i)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("empty chain")
	}
	return out, nil
}
