package ca

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// ServingSigner issues istiod's serving certificate; *CA is one.
type ServingSigner interface {
	SignServing(dnsNames []string, ttl time.Duration) (*tls.Certificate, error)
}

// ServingOptions configure a ServingCert.
type ServingOptions struct {
	// DNSNames are the certificate's names, e.g. DefaultServingDNSNames("istiod", "istio-system", "cluster.local").
	DNSNames []string
	// TTL of each certificate, DefaultServingTTL when zero.
	TTL time.Duration
	// RenewFraction of a certificate's lifetime after which it is replaced; 0.8 when zero.
	RenewFraction float64
	// RetryInterval after a failed renewal, 10s when zero; never later than halfway to the expiry.
	RetryInterval time.Duration
	// OnRotate, optional, is called (from Run's goroutine) with each new certificate after it is in use.
	OnRotate func(*tls.Certificate)
	Logger   *slog.Logger
}

// DefaultServingDNSNames are the names istiod's serving certificate carries: the Service's short and cluster
// names in its namespace.
func DefaultServingDNSNames(service, namespace, domain string) []string {
	names := []string{service + "." + namespace + ".svc"}
	if domain != "" {
		names = append(names, service+"."+namespace+".svc."+domain)
	}
	return names
}

// ServingCert holds istiod's current serving certificate and renews it before it expires. Put GetCertificate in
// a tls.Config: new handshakes get the newest certificate, established connections keep theirs (TLS does not
// look at a certificate again after the handshake), so nothing is dropped.
type ServingCert struct {
	signer ServingSigner
	opts   ServingOptions
	log    *slog.Logger
	cur    atomic.Pointer[issued]
}

type issued struct {
	cert *tls.Certificate
	at   time.Time
}

// NewServingCert issues the first certificate; Run renews it.
func NewServingCert(signer ServingSigner, opts ServingOptions) (*ServingCert, error) {
	if signer == nil {
		return nil, errors.New("serving certificate: no signer")
	}
	if len(opts.DNSNames) == 0 {
		return nil, errors.New("serving certificate: no DNS names")
	}
	if opts.TTL <= 0 {
		opts.TTL = DefaultServingTTL
	}
	if opts.RenewFraction <= 0 || opts.RenewFraction >= 1 {
		opts.RenewFraction = 0.8
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &ServingCert{signer: signer, opts: opts, log: opts.Logger.With("component", "ca", "certificate", "serving")}
	if err := s.issue(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *ServingCert) issue() error {
	at := time.Now()
	c, err := s.signer.SignServing(s.opts.DNSNames, s.opts.TTL)
	if err != nil {
		return err
	}
	if c.Leaf == nil {
		return fmt.Errorf("serving certificate for %v: the signer returned no parsed leaf", s.opts.DNSNames)
	}
	s.cur.Store(&issued{cert: c, at: at})
	return nil
}

// GetCertificate returns the current certificate, for tls.Config.GetCertificate.
func (s *ServingCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cur.Load().cert, nil
}

// Current is the certificate new handshakes get.
func (s *ServingCert) Current() *tls.Certificate { return s.cur.Load().cert }

// renewAt is when the current certificate is due for replacement: RenewFraction into its lifetime, but not
// sooner than a second (or half the TTL) after it was issued, so that a certificate cut short by the CA's own
// expiry does not make renewals spin.
func (s *ServingCert) renewAt() time.Time {
	cur := s.cur.Load()
	life := cur.cert.Leaf.NotAfter.Sub(cur.at)
	wait := max(time.Duration(float64(life)*s.opts.RenewFraction), min(time.Second, s.opts.TTL/2))
	return cur.at.Add(wait)
}

// Run renews the certificate whenever it is due, until ctx is done. A failed renewal is retried after
// RetryInterval (sooner when the certificate is close to expiry); the old certificate stays in use meanwhile.
func (s *ServingCert) Run(ctx context.Context) {
	next := s.renewAt()
	for {
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := s.issue(); err != nil {
			left := time.Until(s.cur.Load().cert.Leaf.NotAfter)
			retry := min(s.opts.RetryInterval, max(left/2, 100*time.Millisecond))
			s.log.Error("renewing the serving certificate failed; retrying", "error", err, "retryIn", retry, "currentExpiresIn", left.Round(time.Second))
			next = time.Now().Add(retry)
			continue
		}
		c := s.Current()
		s.log.Info("serving certificate renewed", "names", s.opts.DNSNames, "serial", c.Leaf.SerialNumber.Text(16),
			"expires", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
		if s.opts.OnRotate != nil {
			s.opts.OnRotate(c)
		}
		next = s.renewAt()
	}
}

// ServerTLSConfig is the TLS configuration of istiod's secure ports (15012, 15017): the serving certificate of
// sc, and client certificates verified against the CA's current roots when a client sends one (a client may
// authenticate with a token instead). Pass nil for c to not ask for client certificates (the webhook port).
func ServerTLSConfig(c *CA, sc *ServingCert) *tls.Config {
	base := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: sc.GetCertificate,
	}
	if c == nil {
		return base
	}
	base.ClientAuth = tls.VerifyClientCertIfGiven
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cfg := base.Clone()
		cfg.GetConfigForClient = nil
		cfg.ClientCAs = c.Roots() // read per handshake: the roots may change
		return cfg, nil
	}
	return base
}
