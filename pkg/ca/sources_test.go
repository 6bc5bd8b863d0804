package ca_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshd/meshd/pkg/ca"
	"github.com/meshd/meshd/pkg/ca/catest"
)

// hierarchy is a plugged-in CA: root → intermediate → signing CA (ca-cert.pem).
type hierarchy struct {
	root, inter, signing *catest.Authority
}

func newHierarchy(t *testing.T) hierarchy {
	root := catest.NewRoot(t, "example.org", 48*time.Hour)
	inter := root.Intermediate(t, "example.org", time.Now().Add(-time.Minute), time.Now().Add(24*time.Hour))
	signing := inter.Intermediate(t, "cluster.local", time.Now().Add(-time.Minute), time.Now().Add(12*time.Hour))
	return hierarchy{root, inter, signing}
}

// files writes the hierarchy as Istio's tooling does: cert-chain.pem is ca-cert, intermediates and root.
func (h hierarchy) files(t *testing.T) map[string][]byte {
	return map[string][]byte{
		ca.CACertFile:    h.signing.CertPEM,
		ca.CAKeyFile:     h.signing.KeyPEM,
		ca.CertChainFile: catest.PEM(h.signing.Cert, h.inter.Cert, h.root.Cert),
		ca.RootCertFile:  h.root.CertPEM,
	}
}

func writeDir(t *testing.T, files map[string][]byte) string {
	dir := t.TempDir()
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestPluggedInCertsDirectory(t *testing.T) {
	h := newHierarchy(t)
	for name, chainFile := range map[string][]byte{
		"cert-chain with ca-cert and root": catest.PEM(h.signing.Cert, h.inter.Cert, h.root.Cert),
		"cert-chain with intermediates":    catest.PEM(h.inter.Cert),
		"cert-chain out of order":          catest.PEM(h.root.Cert, h.inter.Cert, h.signing.Cert),
	} {
		t.Run(name, func(t *testing.T) {
			files := h.files(t)
			files[ca.CertChainFile] = chainFile
			dir := writeDir(t, files)
			c, err := ca.New(context.Background(), ca.Options{CACertsDir: dir, SelfSignedDir: t.TempDir(), Logger: quiet()})
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(c.Source(), "plugged-in certs directory") {
				t.Fatalf("source %q", c.Source())
			}
			if !bytes.Equal(c.RootPEM(), h.root.CertPEM) {
				t.Fatal("distributed root is not root-cert.pem")
			}
			csr, _ := catest.NewCSR(t, catest.CSROptions{})
			chain := sign(t, c, csr, productpage, 0)
			if len(chain) != 4 || !chain[1].Equal(h.signing.Cert) || !chain[2].Equal(h.inter.Cert) || !chain[3].Equal(h.root.Cert) {
				t.Fatalf("chain %v, want leaf, signing CA, intermediate, root", subjects(chain))
			}
			verify(t, c, chain)
			checkWorkloadCert(t, chain[0], productpage)
		})
	}
}

func subjects(chain []*x509.Certificate) []string {
	var out []string
	for _, c := range chain {
		out = append(out, c.Subject.String())
	}
	return out
}

func TestPluggedInCertsRefused(t *testing.T) {
	h := newHierarchy(t)
	other := newHierarchy(t)
	expired := h.inter.Intermediate(t, "cluster.local", time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	leafCert, leafKey := h.inter.Leaf(t, productpage, time.Hour)
	for _, tc := range []struct {
		name, want string
		change     func(map[string][]byte)
	}{
		{"key of another certificate", "does not belong to ca-cert.pem", func(f map[string][]byte) { f[ca.CAKeyFile] = other.signing.KeyPEM }},
		{"not chained to the root", "does not chain to root-cert.pem", func(f map[string][]byte) { f[ca.RootCertFile] = other.root.CertPEM }},
		{"intermediate missing", "does not chain", func(f map[string][]byte) { f[ca.CertChainFile] = catest.PEM(h.signing.Cert) }},
		{"not a CA", "is not a CA certificate", func(f map[string][]byte) {
			f[ca.CACertFile], f[ca.CAKeyFile] = catest.PEM(leafCert), catest.KeyPEM(t, leafKey)
		}},
		{"expired", "not now", func(f map[string][]byte) { f[ca.CACertFile], f[ca.CAKeyFile] = expired.CertPEM, expired.KeyPEM }},
		{"encrypted key", "encrypted", func(f map[string][]byte) {
			f[ca.CAKeyFile] = []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
		}},
		{"garbage certificate", "ca-cert.pem", func(f map[string][]byte) { f[ca.CACertFile] = []byte("garbage") }},
		{"no root-cert.pem", "root-cert.pem", func(f map[string][]byte) { delete(f, ca.RootCertFile) }},
		{"key without certificate", "ca-cert.pem", func(f map[string][]byte) { delete(f, ca.CACertFile) }},
		{"certificate without key", "no ca-key.pem", func(f map[string][]byte) { delete(f, ca.CAKeyFile) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := h.files(t)
			tc.change(files)
			selfDir := filepath.Join(t.TempDir(), "self")
			_, err := ca.New(context.Background(), ca.Options{CACertsDir: writeDir(t, files), SelfSignedDir: selfDir, Logger: quiet()})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY-----") {
				t.Fatalf("the error quotes key material: %v", err)
			}
			if _, serr := os.Stat(selfDir); serr == nil {
				t.Fatal("fell through to a self-signed root")
			}
		})
	}
}

func TestEmptyCACertsDirIsSkipped(t *testing.T) {
	c := newSelfSigned(t, ca.Options{CACertsDir: t.TempDir()})
	if !strings.Contains(c.Source(), "self-signed") {
		t.Fatalf("source %q", c.Source())
	}
}

func TestPluggedInCertsSecret(t *testing.T) {
	h := newHierarchy(t)
	cs := fake.NewClientset(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: ca.PluggedSecretName, Namespace: "istio-system"},
		Data:       h.files(t),
	})
	c, err := ca.New(context.Background(), ca.Options{Client: cs, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if c.Source() != "plugged-in Secret istio-system/cacerts" {
		t.Fatalf("source %q", c.Source())
	}
	csr, _ := catest.NewCSR(t, catest.CSROptions{})
	chain := sign(t, c, csr, productpage, 0)
	if len(chain) != 4 {
		t.Fatalf("chain of %d", len(chain))
	}
	verify(t, c, chain)
	if _, err := cs.CoreV1().Secrets("istio-system").Get(context.Background(), ca.SelfSignedSecretName, metav1.GetOptions{}); err == nil {
		t.Fatal("istio-ca-secret created although cacerts exists")
	}

	t.Run("a directory wins over the Secret", func(t *testing.T) {
		other := newHierarchy(t)
		c, err := ca.New(context.Background(), ca.Options{Client: cs, CACertsDir: writeDir(t, other.files(t)), Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(c.RootPEM(), other.root.CertPEM) {
			t.Fatal("the Secret won over the directory")
		}
	})
	t.Run("an invalid Secret is refused", func(t *testing.T) {
		files := h.files(t)
		files[ca.CAKeyFile] = newHierarchy(t).signing.KeyPEM
		cs := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: ca.PluggedSecretName, Namespace: "istio-system"}, Data: files})
		_, err := ca.New(context.Background(), ca.Options{Client: cs, Logger: quiet()})
		if err == nil || !strings.Contains(err.Error(), "istio-system/cacerts") || !strings.Contains(err.Error(), "does not belong") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestSelfSignedRootPersistsInSecret(t *testing.T) {
	cs := fake.NewClientset()
	first, err := ca.New(context.Background(), ca.Options{Client: cs, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	s, err := cs.CoreV1().Secrets("istio-system").Get(context.Background(), ca.SelfSignedSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Type != ca.SelfSignedSecretType || len(s.Data[ca.CACertFile]) == 0 || len(s.Data[ca.CAKeyFile]) == 0 {
		t.Fatalf("Secret type %q keys %v", s.Type, keys(s.Data))
	}
	if !bytes.Equal(s.Data[ca.CACertFile], first.RootPEM()) {
		t.Fatal("the Secret's ca-cert.pem is not the CA's root")
	}
	second, err := ca.New(context.Background(), ca.Options{Client: cs, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.RootPEM(), second.RootPEM()) {
		t.Fatal("a restart has another root")
	}
	if !strings.Contains(first.Source(), "generated now") || strings.Contains(second.Source(), "generated") {
		t.Fatalf("sources %q, %q", first.Source(), second.Source())
	}
	csr, _ := catest.NewCSR(t, catest.CSROptions{})
	verify(t, second, sign(t, first, csr, productpage, 0))

	t.Run("a corrupt Secret is refused and left alone", func(t *testing.T) {
		s := s.DeepCopy()
		s.Data[ca.CAKeyFile] = catest.KeyPEM(t, catest.NewKey(t))
		if _, err := cs.CoreV1().Secrets("istio-system").Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := ca.New(context.Background(), ca.Options{Client: cs, Logger: quiet()})
		if err == nil || !strings.Contains(err.Error(), "left untouched") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("no istio-system namespace", func(t *testing.T) {
		cs := fake.NewClientset()
		cs.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "istio-system")
		})
		_, err := ca.New(context.Background(), ca.Options{Client: cs, Logger: quiet()})
		if err == nil || !strings.Contains(err.Error(), "does namespace istio-system exist") {
			t.Fatalf("got %v", err)
		}
	})
}

// TestReplicasRaceForTheRootSecret: two replicas (each with its own client of one API server) both find no
// istio-ca-secret and both create one; the API server takes the first and refuses the second, which then loads
// the first: both end with the same root.
func TestReplicasRaceForTheRootSecret(t *testing.T) {
	server := fake.NewClientset()
	var (
		mu      sync.Mutex
		gets    int
		creates int
		bothGot = make(chan struct{})
	)
	replica := func() *fake.Clientset {
		cs := &fake.Clientset{}
		cs.AddReactor("*", "*", k8stesting.ObjectReaction(server.Tracker()))
		cs.PrependReactor("get", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
			mu.Lock()
			gets++
			if gets == 2 {
				close(bothGot)
			}
			wait := gets <= 2
			mu.Unlock()
			if wait {
				<-bothGot // neither replica reads before both ask: both see no Secret
			}
			return false, nil, nil
		})
		cs.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
			mu.Lock()
			creates++
			mu.Unlock()
			return false, nil, nil
		})
		return cs
	}
	clients := []*fake.Clientset{replica(), replica()}
	var wg sync.WaitGroup
	cas := make([]*ca.CA, 2)
	errs := make([]error, 2)
	for i := range cas {
		wg.Go(func() {
			cas[i], errs[i] = ca.New(context.Background(), ca.Options{Client: clients[i], Logger: quiet()})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if creates != 2 {
		t.Fatalf("%d creates: the replicas did not race", creates)
	}
	if !bytes.Equal(cas[0].RootPEM(), cas[1].RootPEM()) {
		t.Fatal("the replicas have different roots")
	}
	generated := 0
	for _, c := range cas {
		if strings.Contains(c.Source(), "generated now") {
			generated++
		}
	}
	if generated != 1 {
		t.Fatalf("%d replicas report having generated the root, want 1", generated)
	}
	s, err := server.CoreV1().Secrets("istio-system").Get(context.Background(), ca.SelfSignedSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.Data[ca.CACertFile], cas[0].RootPEM()) {
		t.Fatal("the replicas' root is not the stored one")
	}
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
