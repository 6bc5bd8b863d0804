package ca_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshd/meshd/pkg/ca"
)

var istiodNames = ca.DefaultServingDNSNames("istiod", "istio-system", "cluster.local")

// echoServer serves TLS on loopback with cfg and echoes every line back.
func echoServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				_, _ = io.Copy(conn, conn)
			})
		}
	})
	return ln.Addr().String()
}

func echo(t *testing.T, conn *tls.Conn, r *bufio.Reader, msg string) {
	t.Helper()
	if _, err := conn.Write([]byte(msg + "\n")); err != nil {
		t.Fatalf("write on an established connection: %v", err)
	}
	got, err := r.ReadString('\n')
	if err != nil || got != msg+"\n" {
		t.Fatalf("echo %q: got %q, %v", msg, got, err)
	}
}

// TestServingCertRotates: with a short TTL the serving certificate is replaced before it expires; new
// handshakes get the new one, and a connection made before the rotation keeps working.
func TestServingCertRotates(t *testing.T) {
	c := newSelfSigned(t, ca.Options{})
	rotated := make(chan *tls.Certificate, 8)
	sc, err := ca.NewServingCert(c, ca.ServingOptions{DNSNames: istiodNames, TTL: 2 * time.Second, Logger: quiet(),
		OnRotate: func(cert *tls.Certificate) { rotated <- cert }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	addr := echoServer(t, ca.ServerTLSConfig(nil, sc))
	dial := func() (*tls.Conn, *x509.Certificate) {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: c.Roots(), ServerName: "istiod.istio-system.svc"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn, conn.ConnectionState().PeerCertificates[0]
	}
	old, first := dial()
	oldR := bufio.NewReader(old)
	echo(t, old, oldR, "before the rotation")

	var next *tls.Certificate
	select {
	case next = <-rotated:
	case <-time.After(30 * time.Second):
		t.Fatal("no rotation within 30s of a 2s certificate")
	}
	if issued := next.Leaf.NotBefore.Add(ca.Backdate); !issued.Before(first.NotAfter) {
		t.Errorf("the new certificate was issued at %v, after the old one expired (%v)", issued, first.NotAfter)
	}
	_, second := dial()
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("a new handshake still gets the old certificate")
	}
	if !second.Equal(next.Leaf) || !second.NotAfter.After(first.NotAfter) {
		t.Fatal("the new handshake did not get the rotated certificate")
	}
	echo(t, old, oldR, "after the rotation")
}

type flakySigner struct {
	ca    *ca.CA
	fails atomic.Int32
}

func (f *flakySigner) SignServing(names []string, ttl time.Duration) (*tls.Certificate, error) {
	if f.fails.Add(-1) >= 0 {
		return nil, errors.New("signer down")
	}
	return f.ca.SignServing(names, ttl)
}

func TestServingCertRetriesAFailedRenewal(t *testing.T) {
	signer := &flakySigner{ca: newSelfSigned(t, ca.Options{})}
	rotated := make(chan *tls.Certificate, 1)
	sc, err := ca.NewServingCert(signer, ca.ServingOptions{DNSNames: istiodNames, TTL: time.Second, RetryInterval: 50 * time.Millisecond,
		Logger: quiet(), OnRotate: func(cert *tls.Certificate) {
			select {
			case rotated <- cert:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	first := sc.Current()
	signer.fails.Store(2) // the first two renewals fail
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sc.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case cert := <-rotated:
		if cert == first || signer.fails.Load() >= 0 {
			t.Fatal("rotated without the failures having happened")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no renewal after two failures")
	}
	down := &flakySigner{ca: signer.ca}
	down.fails.Store(1)
	if _, err := ca.NewServingCert(down, ca.ServingOptions{DNSNames: istiodNames}); err == nil {
		t.Fatal("NewServingCert succeeded although the first issuance failed")
	}
}

// TestServerTLSConfigClientCertificates: the secure ports accept clients without a certificate (they may
// send a token), clients with a mesh certificate, and refuse certificates of another root.
func TestServerTLSConfigClientCertificates(t *testing.T) {
	c := newSelfSigned(t, ca.Options{})
	sc, err := ca.NewServingCert(c, ca.ServingOptions{DNSNames: istiodNames})
	if err != nil {
		t.Fatal(err)
	}
	addr := echoServer(t, ca.ServerTLSConfig(c, sc))
	other := newSelfSigned(t, ca.Options{})
	mesh, err := c.SignServing([]string{"client.example"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.SignServing([]string{"client.example"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		ok   bool
	}{{"no client certificate", nil, true}, {"mesh certificate", mesh, true}, {"certificate of another root", foreign, false}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: c.Roots(), ServerName: "istiod.istio-system.svc"}
			if tc.cert != nil {
				cfg.Certificates = []tls.Certificate{*tc.cert}
			}
			conn, err := tls.Dial("tcp", addr, cfg)
			if err == nil {
				defer conn.Close()
				// TLS 1.3: the server's verdict on the client certificate arrives with the first read.
				r := bufio.NewReader(conn)
				if _, err = conn.Write([]byte("x\n")); err == nil {
					_, err = r.ReadString('\n')
				}
			}
			if (err == nil) != tc.ok {
				t.Fatalf("connection error %v, want success %v", err, tc.ok)
			}
		})
	}
}
