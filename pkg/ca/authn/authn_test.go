package authn_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshd/meshd/pkg/ca/authn"
	"github.com/meshd/meshd/pkg/ca/catest"
)

func withToken(tok string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
}

func TestKubeJWT(t *testing.T) {
	cs := fake.NewClientset()
	reviews := catest.FakeTokenReviews(cs, map[string]catest.Token{
		"secret-good":        {User: "system:serviceaccount:default:productpage", Audiences: []string{"istio-ca"}},
		"secret-other-aud":   {User: "system:serviceaccount:default:productpage", Audiences: []string{"https://kubernetes.default.svc"}},
		"secret-user":        {User: "alice", Audiences: []string{"istio-ca"}},
		"secret-node":        {User: "system:node:worker-1", Audiences: []string{"istio-ca"}},
		"secret-bad-sa-name": {User: "system:serviceaccount:default", Audiences: []string{"istio-ca"}},
		// A legacy or misbehaving API server: authenticated, without the audience asked for.
		"secret-lax": {Answer: &authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"other"},
			User: authnv1.UserInfo{Username: "system:serviceaccount:default:productpage"}}},
		"secret-no-audiences": {Answer: &authnv1.TokenReviewStatus{Authenticated: true,
			User: authnv1.UserInfo{Username: "system:serviceaccount:default:productpage"}}},
	})
	a, err := authn.NewKubeJWT(authn.KubeJWTOptions{Client: cs, TrustDomain: "example.org"})
	if err != nil {
		t.Fatal(err)
	}
	caller, err := a.Authenticate(withToken("secret-good"))
	if err != nil {
		t.Fatal(err)
	}
	if caller.Identity != "spiffe://example.org/ns/default/sa/productpage" || caller.Method != authn.MethodToken {
		t.Fatalf("caller %+v", caller)
	}
	for tok, want := range map[string]string{
		"secret-expired-or-forged": "invalid bearer token",
		"secret-other-aud":         "invalid for the target audiences",
		"secret-user":              `user "alice", not to a service account`,
		"secret-node":              "not to a service account",
		"secret-bad-sa-name":       "not to a service account",
		"secret-lax":               "none of the required [istio-ca]",
		"secret-no-audiences":      "none of the required",
	} {
		caller, err := a.Authenticate(withToken(tok))
		if err == nil || caller != nil {
			t.Errorf("token %s: authenticated as %+v", tok, caller)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("token %s: error %q does not say %q", tok, err, want)
		}
		if strings.Contains(err.Error(), "secret-") {
			t.Errorf("token %s: the error quotes the token: %v", tok, err)
		}
		if errors.Is(err, authn.ErrNoCredentials) || errors.Is(err, authn.ErrUnavailable) {
			t.Errorf("token %s: %v is not a plain refusal", tok, err)
		}
	}

	t.Run("audiences are configurable", func(t *testing.T) {
		a, err := authn.NewKubeJWT(authn.KubeJWTOptions{Client: cs, Audiences: []string{"https://kubernetes.default.svc"}})
		if err != nil {
			t.Fatal(err)
		}
		if c, err := a.Authenticate(withToken("secret-other-aud")); err != nil || c.Identity != "spiffe://cluster.local/ns/default/sa/productpage" {
			t.Fatalf("%+v, %v", c, err)
		}
		if _, err := a.Authenticate(withToken("secret-good")); err == nil {
			t.Fatal("an istio-ca token passed for another audience")
		}
	})
	t.Run("API server down", func(t *testing.T) {
		reviews.SetError(apierrors.NewServiceUnavailable("etcd is down"))
		defer reviews.SetError(nil)
		_, err := a.Authenticate(withToken("secret-good"))
		if !errors.Is(err, authn.ErrUnavailable) {
			t.Fatalf("got %v, want ErrUnavailable", err)
		}
	})
	t.Run("no RBAC for TokenReviews", func(t *testing.T) {
		reviews.SetError(apierrors.NewForbidden(schema.GroupResource{Group: "authentication.k8s.io", Resource: "tokenreviews"}, "", errors.New("RBAC")))
		defer reviews.SetError(nil)
		_, err := a.Authenticate(withToken("secret-good"))
		if !errors.Is(err, authn.ErrUnavailable) || !strings.Contains(err.Error(), "may not create TokenReviews") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("no token is no credentials, not a review", func(t *testing.T) {
		before := reviews.Reviews()
		_, err := a.Authenticate(context.Background())
		if !errors.Is(err, authn.ErrNoCredentials) {
			t.Fatalf("got %v, want ErrNoCredentials", err)
		}
		if reviews.Reviews() != before {
			t.Fatal("a TokenReview was made without a token")
		}
	})
}

func TestBearerToken(t *testing.T) {
	for header, want := range map[string]string{
		"Bearer abc":   "abc",
		"bearer  abc ": "abc",
		"Basic abc":    "",
		"Bearer":       "",
		"Bearer   ":    "",
		"abc":          "",
	} {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", header))
		got, err := authn.BearerToken(ctx)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("%q: %q, %v; want %q", header, got, err, want)
		}
		if err != nil && errors.Is(err, authn.ErrNoCredentials) {
			t.Errorf("%q: a malformed header is not an absent one", header)
		}
	}
	two := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"))
	if _, err := authn.BearerToken(two); err == nil {
		t.Error("two authorization headers accepted")
	}
}

// tlsPeer is the context of a call over TLS whose client presented chain.
func tlsPeer(chain ...*x509.Certificate) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: chain}},
	})
}

func TestClientCert(t *testing.T) {
	root := catest.NewRoot(t, "cluster.local", time.Hour)
	inter := root.Intermediate(t, "cluster.local", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	pool := x509.NewCertPool()
	pool.AddCert(root.Cert)
	a := authn.NewClientCert(func() *x509.CertPool { return pool })

	leaf, _ := inter.Leaf(t, "spiffe://cluster.local/ns/default/sa/reviews", time.Hour)
	caller, err := a.Authenticate(tlsPeer(leaf, inter.Cert))
	if err != nil {
		t.Fatal(err)
	}
	if caller.Identity != "spiffe://cluster.local/ns/default/sa/reviews" || caller.Method != authn.MethodClientCertificate {
		t.Fatalf("caller %+v", caller)
	}

	foreign := catest.NewRoot(t, "cluster.local", time.Hour)
	foreignLeaf, _ := foreign.Leaf(t, "spiffe://cluster.local/ns/default/sa/reviews", time.Hour)
	dnsLeaf, _ := inter.Leaf(t, "reviews.default.svc", time.Hour)
	twoURIs, _ := inter.Leaf(t, "spiffe://cluster.local/ns/default/sa/reviews", time.Hour)
	twoURIs.URIs = append(twoURIs.URIs, twoURIs.URIs[0]) // as parsed from a certificate with two URI SANs
	for name, tc := range map[string]struct {
		chain []*x509.Certificate
		want  string
	}{
		"another root":         {[]*x509.Certificate{foreignLeaf}, "does not verify against the mesh roots"},
		"missing intermediate": {[]*x509.Certificate{leaf}, "does not verify"},
		"no SPIFFE ID":         {[]*x509.Certificate{dnsLeaf, inter.Cert}, "0 URI SANs"},
		"two URI SANs":         {[]*x509.Certificate{twoURIs, inter.Cert}, "2 URI SANs"},
		"a CA certificate":     {[]*x509.Certificate{inter.Cert}, "CA certificate"},
	} {
		_, err := a.Authenticate(tlsPeer(tc.chain...))
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, authn.ErrNoCredentials) {
			t.Errorf("%s: got %v, want a refusal saying %q", name, err, tc.want)
		}
	}
	if _, err := a.Authenticate(tlsPeer()); !errors.Is(err, authn.ErrNoCredentials) {
		t.Errorf("no certificate: %v, want ErrNoCredentials", err)
	}
	if _, err := a.Authenticate(context.Background()); !errors.Is(err, authn.ErrNoCredentials) {
		t.Errorf("no peer: %v, want ErrNoCredentials", err)
	}
}

type fixed struct {
	caller *authn.Caller
	err    error
}

func (f fixed) Authenticate(context.Context) (*authn.Caller, error) { return f.caller, f.err }
func (f fixed) Method() string                                      { return "fixed" }

func TestChain(t *testing.T) {
	none := fixed{err: authn.ErrNoCredentials}
	bad := fixed{err: errors.New("bad token")}
	good := fixed{caller: &authn.Caller{Identity: "spiffe://cluster.local/ns/a/sa/b"}}
	if c, err := (authn.Chain{none, good}).Authenticate(context.Background()); err != nil || c != good.caller {
		t.Fatalf("none, good: %v %v", c, err)
	}
	if _, err := (authn.Chain{none, none}).Authenticate(context.Background()); !errors.Is(err, authn.ErrNoCredentials) {
		t.Fatalf("none, none: %v", err)
	}
	_, err := (authn.Chain{bad, none}).Authenticate(context.Background())
	if err == nil || errors.Is(err, authn.ErrNoCredentials) || !strings.Contains(err.Error(), "bad token") {
		t.Fatalf("bad, none: %v", err)
	}
}

func TestSPIFFEID(t *testing.T) {
	id := authn.SPIFFEID("cluster.local", "default", "productpage")
	if id != "spiffe://cluster.local/ns/default/sa/productpage" {
		t.Fatal(id)
	}
	td, ns, sa, err := authn.ParseSPIFFEID(id)
	if err != nil || td != "cluster.local" || ns != "default" || sa != "productpage" {
		t.Fatal(td, ns, sa, err)
	}
	for _, bad := range []string{"", "spiffe://cluster.local/ns/default", "spiffe:///ns/a/sa/b", "https://x/ns/a/sa/b",
		"spiffe://td/ns/a/sa/b/c", "spiffe://td/ns//sa/b"} {
		if _, _, _, err := authn.ParseSPIFFEID(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
