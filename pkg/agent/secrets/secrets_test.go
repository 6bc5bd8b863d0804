package secrets_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/agent/bootstrap"
	"github.com/meshd/meshd/pkg/agent/caclient/caclienttest"
	"github.com/meshd/meshd/pkg/agent/secrets"
	"github.com/meshd/meshd/pkg/ca/catest"
)

const productpage = "spiffe://cluster.local/ns/default/sa/productpage"

// countingSigner counts the calls to the CA and their failures.
type countingSigner struct {
	next          secrets.Signer
	calls, failed atomic.Int32
}

func (s *countingSigner) Sign(ctx context.Context, csr []byte, ttl time.Duration) ([]string, error) {
	s.calls.Add(1)
	chain, err := s.next.Sign(ctx, csr, ttl)
	if err != nil {
		s.failed.Add(1)
	}
	return chain, err
}

func newManager(t *testing.T, h *caclienttest.CA, token string, opts secrets.Options) (*secrets.Manager, *countingSigner) {
	t.Helper()
	signer := &countingSigner{next: h.Client(t, caclienttest.TokenFile(t, token))}
	opts.Signer = signer
	opts.TrustDomain, opts.Namespace, opts.ServiceAccount = "cluster.local", "default", "productpage"
	opts.Logger = caclienttest.Quiet()
	m, err := secrets.NewManager(opts)
	if err != nil {
		t.Fatal(err)
	}
	return m, signer
}

func get(t *testing.T, m *secrets.Manager, name string) *secrets.Item {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	item, err := m.Get(ctx, name)
	if err != nil {
		t.Fatalf("Get(%s): %v", name, err)
	}
	return item
}

// run runs m until the test ends; the returned function stops it early and waits for Run to return.
func run(t *testing.T, m *secrets.Manager) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func parseCerts(t *testing.T, p []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, p = pem.Decode(p)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatal("no certificate in PEM")
	}
	return out
}

// checkItem verifies that the workload item is a usable TLS identity for productpage chaining to root.
func checkItem(t *testing.T, item *secrets.Item, root []byte) *x509.Certificate {
	t.Helper()
	pair, err := tls.X509KeyPair(item.CertChainPEM, item.PrivateKeyPEM)
	if err != nil {
		t.Fatalf("certificate and key do not match: %v", err)
	}
	leaf := pair.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != productpage {
		t.Fatalf("leaf URIs %v, want [%s]", leaf.URIs, productpage)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(root)
	inter := x509.NewCertPool()
	for _, c := range parseCerts(t, item.CertChainPEM)[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
		t.Fatalf("leaf does not verify against the root: %v", err)
	}
	if !item.NotAfter.Equal(leaf.NotAfter) || item.Version == "" {
		t.Fatalf("item NotAfter %v / version %q do not describe the leaf (%v)", item.NotAfter, item.Version, leaf.NotAfter)
	}
	return leaf
}

// TestGet: the first Get has the CA issue a certificate for the configured identity with a key made here; the
// root is the CA's; later Gets are served from the cache.
func TestGet(t *testing.T) {
	h := caclienttest.Start(t, nil)
	m, signer := newManager(t, h, "productpage-token", secrets.Options{})
	if m.Current() != nil {
		t.Fatal("a certificate before any Get")
	}
	cert := get(t, m, secrets.WorkloadCertName)
	leaf := checkItem(t, cert, h.CA.RootPEM())
	if d := time.Until(leaf.NotAfter); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("certificate valid for %s, want the default 24h", d)
	}
	if k, ok := pair(t, cert).PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("key %T, want ECDSA P-256 by default", pair(t, cert).PrivateKey)
	}
	root := get(t, m, secrets.RootCertName)
	if !bytes.Equal(bytes.TrimSpace(root.RootPEM), bytes.TrimSpace(h.CA.RootPEM())) {
		t.Fatal("ROOTCA is not the CA's root")
	}
	if root.CertChainPEM != nil || root.PrivateKeyPEM != nil {
		t.Fatal("ROOTCA carries the workload certificate or key")
	}
	if again := get(t, m, secrets.WorkloadCertName); again.Version != cert.Version {
		t.Fatal("second Get issued a new certificate")
	}
	if n := signer.calls.Load(); n != 1 {
		t.Fatalf("%d CA calls, want 1", n)
	}
	if m.Current() != cert {
		t.Fatal("Current is not the certificate Get returned")
	}
}

func pair(t *testing.T, item *secrets.Item) tls.Certificate {
	t.Helper()
	p, err := tls.X509KeyPair(item.CertChainPEM, item.PrivateKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestGetConcurrent: Envoy asks for both secrets at once on several streams; one CSR is sent.
func TestGetConcurrent(t *testing.T) {
	h := caclienttest.Start(t, nil)
	m, signer := newManager(t, h, "productpage-token", secrets.Options{})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			name := secrets.WorkloadCertName
			if i%2 == 1 {
				name = secrets.RootCertName
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if _, err := m.Get(ctx, name); err != nil {
				t.Errorf("Get: %v", err)
			}
		})
	}
	wg.Wait()
	if n := signer.calls.Load(); n != 1 {
		t.Fatalf("%d CA calls for concurrent Gets, want 1", n)
	}
}

// TestUnknownSecret: a name other than default and ROOTCA is an error, and costs no CA call.
func TestUnknownSecret(t *testing.T) {
	h := caclienttest.Start(t, nil)
	m, signer := newManager(t, h, "productpage-token", secrets.Options{})
	_, err := m.Get(context.Background(), "file-cert:/etc/certs/cert.pem")
	if !errors.Is(err, secrets.ErrUnknownSecret) {
		t.Fatalf("Get of an unknown name: %v, want ErrUnknownSecret", err)
	}
	if signer.calls.Load() != 0 {
		t.Fatal("an unknown name made a CA call")
	}
}

// TestRSAKey: KeyType RSA makes a 2048-bit RSA key.
func TestRSAKey(t *testing.T) {
	h := caclienttest.Start(t, nil)
	m, _ := newManager(t, h, "productpage-token", secrets.Options{KeyType: "RSA"})
	cert := get(t, m, secrets.WorkloadCertName)
	checkItem(t, cert, h.CA.RootPEM())
	k, ok := pair(t, cert).PrivateKey.(*rsa.PrivateKey)
	if !ok || k.N.BitLen() != 2048 {
		t.Fatalf("key %T, want a 2048-bit RSA key", pair(t, cert).PrivateKey)
	}
}

// TestOptionsChecked: nonsense settings are refused rather than silently defaulted.
func TestOptionsChecked(t *testing.T) {
	base := secrets.Options{Signer: &countingSigner{}, Namespace: "default"}
	for name, mut := range map[string]func(*secrets.Options){
		"no signer":    func(o *secrets.Options) { o.Signer = nil },
		"no namespace": func(o *secrets.Options) { o.Namespace = "" },
		"grace 1":      func(o *secrets.Options) { o.GraceRatio = 1 },
		"grace < 0":    func(o *secrets.Options) { o.GraceRatio = -0.1 },
		"sub-second":   func(o *secrets.Options) { o.TTL = 10 * time.Millisecond },
		"unknown key":  func(o *secrets.Options) { o.KeyType = "DSA" },
	} {
		o := base
		mut(&o)
		if _, err := secrets.NewManager(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := secrets.NewManager(base); err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
}

// TestRotation: Run renews when GraceRatio of the lifetime remains (not before, not after expiry), with a new
// key and serial each time, and notifies subscribers.
func TestRotation(t *testing.T) {
	h := caclienttest.Start(t, nil)
	// 4s certificates renewed with a quarter of their life left: about 3s after issuance.
	m, _ := newManager(t, h, "productpage-token", secrets.Options{TTL: 4 * time.Second, GraceRatio: 0.25})
	updates, unsubscribe := m.Subscribe()
	defer unsubscribe()
	run(t, m)

	next := func() (*secrets.Item, time.Time) {
		t.Helper()
		select {
		case <-updates:
			return m.Current(), time.Now()
		case <-time.After(20 * time.Second):
			t.Fatal("no certificate notification within 20s")
		}
		return nil, time.Time{}
	}
	first, firstAt := next()
	firstLeaf := checkItem(t, first, h.CA.RootPEM())
	second, secondAt := next()
	secondLeaf := checkItem(t, second, h.CA.RootPEM())
	if secondLeaf.SerialNumber.Cmp(firstLeaf.SerialNumber) == 0 || second.Version == first.Version {
		t.Fatal("renewal kept the serial number")
	}
	if bytes.Equal(second.PrivateKeyPEM, first.PrivateKeyPEM) {
		t.Fatal("renewal kept the private key")
	}
	if gap := secondAt.Sub(firstAt); gap < 2*time.Second {
		t.Fatalf("renewed %s after issuance, want about 3s (a quarter of 4s left)", gap)
	}
	if !secondAt.Before(first.NotAfter) {
		t.Fatalf("renewed at %v, after the old certificate expired (%v)", secondAt, first.NotAfter)
	}
}

// TestOutputFiles: with OutputDir, the files proxyless gRPC reads exist with owner-only key, make a working
// key pair, and are replaced on renewal, leaving no temporary file behind.
func TestOutputFiles(t *testing.T) {
	h := caclienttest.Start(t, nil)
	dir := filepath.Join(t.TempDir(), "var", "lib", "istio", "data")
	m, _ := newManager(t, h, "productpage-token", secrets.Options{TTL: 2 * time.Second, OutputDir: dir})
	stop := run(t, m)

	keyFile := filepath.Join(dir, bootstrap.KeyFile)
	certFile := filepath.Join(dir, bootstrap.CertChainFile)
	rootFile := filepath.Join(dir, bootstrap.RootCertFile)
	var first *x509.Certificate
	testutil.Eventually(t, 20*time.Second, "the certificate files", func() bool {
		p, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return false
		}
		first = p.Leaf
		return true
	})
	for file, want := range map[string]os.FileMode{keyFile: 0o600, certFile: 0o644, rootFile: 0o644} {
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", filepath.Base(file), fi.Mode().Perm(), want)
		}
	}
	rootPEM, err := os.ReadFile(rootFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.TrimSpace(rootPEM), bytes.TrimSpace(h.CA.RootPEM())) {
		t.Fatal("root-cert.pem is not the CA root")
	}
	if len(first.URIs) != 1 || first.URIs[0].String() != productpage {
		t.Fatalf("cert-chain.pem is for %v", first.URIs)
	}
	oldKey, _ := os.ReadFile(keyFile)

	testutil.Eventually(t, 20*time.Second, "renewed certificate files", func() bool {
		p, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			// A reader between the renames may see a new key with the old certificate: it retries, as
			// gRPC's file_watcher does.
			return false
		}
		return p.Leaf.SerialNumber.Cmp(first.SerialNumber) != 0
	})
	if newKey, _ := os.ReadFile(keyFile); bytes.Equal(newKey, oldKey) {
		t.Fatal("key.pem not replaced on renewal")
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("renewed key.pem: %v, mode %v", err, fi.Mode().Perm())
	}
	// Renewals keep coming every second: stop them, so that no write is in flight while the directory is read.
	stop()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file %s left in the output directory", e.Name())
		}
	}
}

// TestCADownGet: with the CA unreachable, Get keeps trying until its context's deadline and then fails with
// both the deadline and the last cause.
func TestCADownGet(t *testing.T) {
	h := caclienttest.Start(t, nil)
	h.Stop()
	m, signer := newManager(t, h, "productpage-token", secrets.Options{RetryInitial: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := m.Get(ctx, secrets.WorkloadCertName)
	if err == nil {
		t.Fatal("Get succeeded with the CA down")
	}
	if !errors.Is(err, context.DeadlineExceeded) || status.Code(err) != codes.Unavailable {
		t.Fatalf("Get with the CA down: %v, want the deadline and the Unavailable cause", err)
	}
	if time.Since(start) < 450*time.Millisecond || signer.calls.Load() < 2 {
		t.Fatalf("Get gave up after %s and %d attempts, before its deadline", time.Since(start), signer.calls.Load())
	}
	if m.Current() != nil {
		t.Fatal("a certificate without a CA")
	}
}

// TestRefusedGet: a refusal (bad token) is not retried until the deadline: it is returned at once.
func TestRefusedGet(t *testing.T) {
	h := caclienttest.Start(t, nil)
	m, signer := newManager(t, h, "forged-token", secrets.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err := m.Get(ctx, secrets.WorkloadCertName)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "token rejected") {
		t.Fatalf("Get with a forged token: %v, want Unauthenticated naming the token", err)
	}
	if time.Since(start) > 10*time.Second || signer.calls.Load() != 1 {
		t.Fatalf("refusal retried: %d calls in %s", signer.calls.Load(), time.Since(start))
	}
}

// TestRunKeepsCertWhileCADown: when renewal fails, the current certificate stays in use and Run retries with
// backoff; once the CA is back, the next attempt renews it.
func TestRunKeepsCertWhileCADown(t *testing.T) {
	h := caclienttest.Start(t, nil)
	m, signer := newManager(t, h, "productpage-token", secrets.Options{TTL: 2 * time.Second,
		RetryInitial: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	run(t, m)
	testutil.Eventually(t, 20*time.Second, "the first certificate", func() bool { return m.Current() != nil })
	h.Stop()
	first := m.Current()
	testutil.Eventually(t, 20*time.Second, "three failed renewals", func() bool { return signer.failed.Load() >= 3 })
	if cur := m.Current(); cur == nil || cur.Version != first.Version {
		t.Fatal("the certificate was dropped or replaced while renewal failed")
	}
	h.Restart(t)
	testutil.Eventually(t, 30*time.Second, "renewal after the CA is back", func() bool {
		cur := m.Current()
		return cur != nil && cur.Version != first.Version
	})
	checkItem(t, m.Current(), h.CA.RootPEM())
}

// signerFunc adapts a function to secrets.Signer.
type signerFunc func(ctx context.Context, csr []byte, ttl time.Duration) ([]string, error)

func (f signerFunc) Sign(ctx context.Context, csr []byte, ttl time.Duration) ([]string, error) {
	return f(ctx, csr, ttl)
}

// TestBadAnswersRefused: a chain that is not for the key of the request, or that ends without a root, is not
// put in use: Envoy would fail every handshake with it.
func TestBadAnswersRefused(t *testing.T) {
	h := caclienttest.Start(t, nil)
	for name, signer := range map[string]signerFunc{
		"another key": func(_ context.Context, _ []byte, ttl time.Duration) ([]string, error) {
			other, _ := catest.NewCSR(t, catest.CSROptions{})
			return h.CA.Sign(other, productpage, ttl)
		},
		"no root": func(_ context.Context, csr []byte, ttl time.Duration) ([]string, error) {
			chain, err := h.CA.Sign(csr, productpage, ttl)
			return chain[:1], err
		},
	} {
		m, err := secrets.NewManager(secrets.Options{Signer: signer, Namespace: "default", ServiceAccount: "productpage",
			Logger: caclienttest.Quiet(), RetryInitial: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, err = m.Get(ctx, secrets.WorkloadCertName)
		cancel()
		if err == nil || m.Current() != nil {
			t.Errorf("%s: accepted (%v)", name, err)
		}
	}
}
