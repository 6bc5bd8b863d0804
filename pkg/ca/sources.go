package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"go.step.sm/crypto/x509util"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// kubeTimeout bounds each API call made while loading key material.
const kubeTimeout = 30 * time.Second

// rootTemplate is a generated root: the trust domain as organization (as istiod), allowed to sign CAs below it.
const rootTemplate = `{
	"subject": {"organization": {{ toJson .Organization }}},
	"keyUsage": ["certSign", "crlSign", "digitalSignature"],
	"basicConstraints": {"isCA": true, "maxPathLen": -1}
}`

// generateRoot makes a self-signed root for the trust domain and returns it with its key, PEM-encoded for
// persisting.
func generateRoot(trustDomain string, kt KeyType, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := kt.generate()
	if err != nil {
		return nil, nil, fmt.Errorf("generating the root key (%s): %w", kt, err)
	}
	data := x509util.NewTemplateData()
	data.Set("Organization", []string{trustDomain})
	tmpl, err := x509util.NewCertificateFromX509(&x509.Certificate{PublicKey: key.Public()}, x509util.WithTemplate(rootTemplate, data))
	if err != nil {
		return nil, nil, fmt.Errorf("building the root certificate: %w", err)
	}
	now := time.Now()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-Backdate), now.Add(ttl)
	c := tmpl.GetCertificate()
	cert, err := x509util.CreateCertificate(c, c, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("self-signing the root certificate: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(cert), keyPEM, nil
}

// loadPluggedDir reads a cacerts directory. found is false when the directory or its ca-key.pem is missing.
func loadPluggedDir(dir string) (_ *KeyCertBundle, found bool, _ error) {
	read := func(name string, required bool) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) && !required {
			return nil, nil
		}
		return b, err
	}
	key, err := read(CAKeyFile, true)
	if errors.Is(err, fs.ErrNotExist) {
		if _, cerr := os.Stat(filepath.Join(dir, CACertFile)); cerr == nil {
			return nil, false, fmt.Errorf("plugged-in certs directory %s has %s but no %s", dir, CACertFile, CAKeyFile)
		}
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("plugged-in certs directory %s: %w", dir, err)
	}
	cert, err := read(CACertFile, true)
	if err != nil {
		return nil, false, fmt.Errorf("plugged-in certs directory %s: %w", dir, err)
	}
	root, err := read(RootCertFile, true)
	if err != nil {
		return nil, false, fmt.Errorf("plugged-in certs directory %s: %w", dir, err)
	}
	chain, err := read(CertChainFile, false)
	if err != nil {
		return nil, false, fmt.Errorf("plugged-in certs directory %s: %w", dir, err)
	}
	b, err := NewKeyCertBundle(cert, key, chain, root)
	if err != nil {
		return nil, false, fmt.Errorf("plugged-in certs directory %s: %w", dir, err)
	}
	return b, true, nil
}

// loadPluggedSecret reads the Secret cacerts. found is false when it does not exist.
func loadPluggedSecret(ctx context.Context, client kubernetes.Interface, ns string) (_ *KeyCertBundle, found bool, _ error) {
	ctx, cancel := context.WithTimeout(ctx, kubeTimeout)
	defer cancel()
	s, err := client.CoreV1().Secrets(ns).Get(ctx, PluggedSecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading Secret %s/%s (plugged-in CA certs): %w", ns, PluggedSecretName, err)
	}
	for _, k := range []string{CACertFile, CAKeyFile, RootCertFile} {
		if len(s.Data[k]) == 0 {
			return nil, false, fmt.Errorf("secret %s/%s (plugged-in CA certs) has no %s", ns, PluggedSecretName, k)
		}
	}
	b, err := NewKeyCertBundle(s.Data[CACertFile], s.Data[CAKeyFile], s.Data[CertChainFile], s.Data[RootCertFile])
	if err != nil {
		return nil, false, fmt.Errorf("secret %s/%s (plugged-in CA certs): %w", ns, PluggedSecretName, err)
	}
	return b, true, nil
}

// selfSignedSecret loads the root of istio-ca-secret, creating the Secret with a new root if it does not exist.
// When another replica creates it between our read and our create, theirs is loaded: every replica ends with
// the root that is in the Secret.
func selfSignedSecret(ctx context.Context, opts Options) (_ *KeyCertBundle, created bool, _ error) {
	secrets := opts.Client.CoreV1().Secrets(opts.Namespace)
	name := opts.Namespace + "/" + SelfSignedSecretName
	for attempt := 1; ; attempt++ {
		getCtx, cancel := context.WithTimeout(ctx, kubeTimeout)
		s, err := secrets.Get(getCtx, SelfSignedSecretName, metav1.GetOptions{})
		cancel()
		if err == nil {
			b, err := bundleFromSelfSignedSecret(s)
			if err != nil {
				return nil, false, fmt.Errorf("secret %s (self-signed CA root): %w; it is left untouched: fix or delete it to have a new root generated", name, err)
			}
			return b, false, nil
		}
		if !apierrors.IsNotFound(err) {
			return nil, false, fmt.Errorf("reading Secret %s (self-signed CA root): %w", name, err)
		}
		certPEM, keyPEM, err := generateRoot(opts.TrustDomain, opts.KeyType, opts.RootTTL)
		if err != nil {
			return nil, false, err
		}
		s = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: SelfSignedSecretName, Namespace: opts.Namespace},
			Type:       SelfSignedSecretType,
			Data:       map[string][]byte{CACertFile: certPEM, CAKeyFile: keyPEM},
		}
		createCtx, cancel := context.WithTimeout(ctx, kubeTimeout)
		s, err = secrets.Create(createCtx, s, metav1.CreateOptions{})
		cancel()
		switch {
		case err == nil:
			b, err := bundleFromSelfSignedSecret(s)
			if err != nil {
				return nil, false, fmt.Errorf("secret %s (self-signed CA root) as created: %w", name, err)
			}
			opts.Logger.Info("generated a self-signed CA root and stored it", "secret", name, "keyType", string(opts.KeyType),
				"expires", b.RootExpiry().UTC().Format(time.RFC3339))
			return b, true, nil
		case apierrors.IsAlreadyExists(err) && attempt < 5:
			opts.Logger.Info("another replica created the CA root Secret first; loading it", "secret", name)
			continue
		case apierrors.IsNotFound(err):
			return nil, false, fmt.Errorf("creating Secret %s (self-signed CA root): %w (does namespace %s exist?)", name, err, opts.Namespace)
		default:
			return nil, false, fmt.Errorf("creating Secret %s (self-signed CA root): %w", name, err)
		}
	}
}

func bundleFromSelfSignedSecret(s *corev1.Secret) (*KeyCertBundle, error) {
	if len(s.Data[CACertFile]) == 0 || len(s.Data[CAKeyFile]) == 0 {
		return nil, fmt.Errorf("it has no %s or no %s", CACertFile, CAKeyFile)
	}
	return NewKeyCertBundle(s.Data[CACertFile], s.Data[CAKeyFile], s.Data[CertChainFile], s.Data[RootCertFile])
}

// selfSignedDir loads the root kept in dir, generating it when the directory has none. The key file is
// renamed into place before the certificate: a certificate without its key is an error (that root may be
// trusted somewhere), a key without its certificate is an interrupted first start, and is replaced.
func selfSignedDir(opts Options) (_ *KeyCertBundle, created bool, _ error) {
	dir := opts.SelfSignedDir
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		b, err := NewKeyCertBundle(certPEM, keyPEM, nil, nil)
		if err != nil {
			return nil, false, fmt.Errorf("self-signed CA root in %s: %w; it is left untouched: fix or delete it to have a new root generated", dir, err)
		}
		if fi, err := os.Stat(keyPath); err == nil && fi.Mode().Perm()&0o077 != 0 {
			opts.Logger.Warn("the CA private key file is readable by others than its owner", "path", keyPath, "mode", fi.Mode().Perm().String())
		}
		return b, false, nil
	case certErr == nil:
		return nil, false, fmt.Errorf("self-signed CA root in %s: %s exists but %s cannot be read: %w", dir, CACertFile, CAKeyFile, keyErr)
	case !errors.Is(certErr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("self-signed CA root in %s: %w", dir, certErr)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("self-signed CA root directory: %w", err)
	}
	certPEM, keyPEM, err := generateRoot(opts.TrustDomain, opts.KeyType, opts.RootTTL)
	if err != nil {
		return nil, false, err
	}
	if err := WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, false, fmt.Errorf("storing the self-signed CA key: %w", err)
	}
	if err := WriteFileAtomic(certPath, certPEM, 0o600); err != nil {
		return nil, false, fmt.Errorf("storing the self-signed CA root: %w", err)
	}
	b, err := NewKeyCertBundle(certPEM, keyPEM, nil, nil)
	if err != nil {
		return nil, false, fmt.Errorf("self-signed CA root as generated: %w", err)
	}
	opts.Logger.Info("generated a self-signed CA root and stored it", "dir", dir, "keyType", string(opts.KeyType),
		"expires", b.RootExpiry().UTC().Format(time.RFC3339))
	return b, true, nil
}

// WriteFileAtomic writes data to a temporary file of the same directory with perm and renames it to path, so
// that readers see the old content or the new, never a part.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename, there is nothing to remove
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
