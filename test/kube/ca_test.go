package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/pkg/ca"
	"github.com/meshd/meshd/pkg/ca/authn"
	"github.com/meshd/meshd/pkg/ca/catest"
	"github.com/meshd/meshd/pkg/ca/rootcert"
	"github.com/meshd/meshd/pkg/ca/server"
	"github.com/meshd/meshd/pkg/leaderelection"
	"github.com/meshd/meshd/test/kube/kubetest"
)

func caLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// serviceAccountToken asks the API server for a token of ns/sa bound to the audiences.
func serviceAccountToken(t *testing.T, cs kubernetes.Interface, ns, sa string, audiences ...string) string {
	t.Helper()
	exp := int64(600)
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(t.Context(), sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// serveCA serves the CA service on a loopback TLS port as istiod's 15012 does, authenticating with real
// TokenReviews, and returns a client of it.
func serveCA(t *testing.T, c *ca.CA, cs kubernetes.Interface) pb.IstioCertificateServiceClient {
	t.Helper()
	jwt, err := authn.NewKubeJWT(authn.KubeJWTOptions{Client: cs, TrustDomain: c.TrustDomain()})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(c, authn.Chain{authn.NewClientCert(c.Roots), jwt}, server.Options{Logger: caLogger()})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ca.NewServingCert(c, ca.ServingOptions{DNSNames: ca.DefaultServingDNSNames("istiod", "istio-system", "cluster.local"), Logger: caLogger()})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(ca.ServerTLSConfig(c, sc))))
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	t.Cleanup(func() { g.Stop(); <-served })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{RootCAs: c.Roots(), ServerName: "istiod.istio-system.svc"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewIstioCertificateServiceClient(conn)
}

func createCertificate(t *testing.T, client pb.IstioCertificateServiceClient, token string) (*pb.IstioCertificateResponse, error) {
	t.Helper()
	csr, _ := catest.NewCSR(t, catest.CSROptions{URIs: []string{"spiffe://cluster.local/ns/istio-system/sa/istiod"}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	return client.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: string(csr)})
}

// TestCAOnARealCluster: the CA's root lives in the istio-ca-secret Secret, created once and shared by racing
// replicas and restarts; TokenRequest tokens for istio-ca authenticate through real TokenReviews, others do not;
// the elected leader keeps istio-ca-root-cert in every namespace.
func TestCAOnARealCluster(t *testing.T) {
	c := kubetest.Shared(t)
	cs := c.Clientset
	ctx := t.Context()
	// The CA's namespace (istiod's istio-system) is one of this test's own, so that the root Secret is new.
	const caNS, workloads = "meshd-ca-system", "ca-workloads"
	createNamespace(t, cs, caNS, nil)
	createNamespace(t, cs, workloads, nil)
	for _, sa := range []string{"productpage", "gone"} {
		if _, err := cs.CoreV1().ServiceAccounts(workloads).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}},
			metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	opts := ca.Options{Client: cs, Namespace: caNS, Logger: caLogger()}

	// Two replicas start together on a cluster without a root.
	replicas := make([]*ca.CA, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() { replicas[i], errs[i] = ca.New(ctx, opts) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(replicas[0].RootPEM(), replicas[1].RootPEM()) {
		t.Fatal("two replicas started together have different roots")
	}
	secret, err := cs.CoreV1().Secrets(caNS).Get(ctx, ca.SelfSignedSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if secret.Type != ca.SelfSignedSecretType || !bytes.Equal(secret.Data[ca.CACertFile], replicas[0].RootPEM()) {
		t.Fatalf("Secret %s/%s: type %q, does not hold the replicas' root", caNS, ca.SelfSignedSecretName, secret.Type)
	}
	restarted, err := ca.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(restarted.RootPEM(), replicas[0].RootPEM()) {
		t.Fatal("a restarted CA has another root")
	}
	after, err := cs.CoreV1().Secrets(caNS).Get(ctx, ca.SelfSignedSecretName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after.UID != secret.UID || after.ResourceVersion != secret.ResourceVersion {
		t.Fatal("the root Secret was recreated or rewritten by a restart")
	}

	client := serveCA(t, restarted, cs)
	t.Run("TokenRequest token for istio-ca", func(t *testing.T) {
		resp, err := createCertificate(t, client, serviceAccountToken(t, cs, workloads, "productpage", "istio-ca"))
		if err != nil {
			t.Fatal(err)
		}
		chain := catest.ParseChain(t, resp.CertChain)
		leaf := chain[0]
		want := "spiffe://cluster.local/ns/" + workloads + "/sa/productpage"
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
			t.Fatalf("certificate for %v, want %s (the CSR asked for istiod)", leaf.URIs, want)
		}
		// Issued by one replica, it verifies with the roots of every other.
		for _, r := range replicas {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: r.Roots(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("token for another audience", func(t *testing.T) {
		resp, err := createCertificate(t, client, serviceAccountToken(t, cs, workloads, "productpage", kubetest.ServiceAccountIssuer))
		if status.Code(err) != codes.Unauthenticated || len(resp.GetCertChain()) != 0 {
			t.Fatalf("got %v, want Unauthenticated and no certificate", err)
		}
		t.Log(err)
	})
	t.Run("token of a deleted ServiceAccount", func(t *testing.T) {
		token := serviceAccountToken(t, cs, workloads, "gone", "istio-ca")
		if err := cs.CoreV1().ServiceAccounts(workloads).Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		resp, err := createCertificate(t, client, token)
		if status.Code(err) != codes.Unauthenticated || len(resp.GetCertChain()) != 0 {
			t.Fatalf("got %v, want Unauthenticated and no certificate", err)
		}
	})

	t.Run("istio-ca-root-cert in every namespace, kept by the leader", func(t *testing.T) {
		controller, err := rootcert.New(cs, restarted.RootPEM, rootcert.Options{Logger: caLogger()})
		if err != nil {
			t.Fatal(err)
		}
		elector, err := leaderelection.New(cs, leaderelection.Options{Namespace: caNS, Name: "meshd-ca-test", Identity: "replica-0", Logger: caLogger()})
		if err != nil {
			t.Fatal(err)
		}
		elector.AddRunFunction(controller.Run)
		ectx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { _ = elector.Run(ectx); close(done) }()
		defer func() { cancel(); <-done }()

		root := string(restarted.RootPEM())
		has := func(ns string) func() error {
			return func() error {
				cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, rootcert.ConfigMapName, metav1.GetOptions{})
				if err != nil {
					return err
				}
				if cm.Data[rootcert.DataKey] != root {
					return fmt.Errorf("%s/%s does not hold the root", ns, rootcert.ConfigMapName)
				}
				return nil
			}
		}
		for _, ns := range []string{"default", workloads, caNS} {
			kubetest.Eventually(t, time.Minute, has(ns))
		}
		createNamespace(t, cs, "ca-created-later", nil)
		kubetest.Eventually(t, time.Minute, has("ca-created-later"))

		if err := cs.CoreV1().ConfigMaps(workloads).Delete(ctx, rootcert.ConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		kubetest.Eventually(t, time.Minute, has(workloads))
		cm, err := cs.CoreV1().ConfigMaps("default").Get(ctx, rootcert.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cm.Data[rootcert.DataKey] = "tampered"
		if _, err := cs.CoreV1().ConfigMaps("default").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		kubetest.Eventually(t, time.Minute, has("default"))

		if _, err := cs.CoreV1().ConfigMaps("kube-system").Get(ctx, rootcert.ConfigMapName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("kube-system: %v, want no %s", err, rootcert.ConfigMapName)
		}
		if !elector.IsLeader() {
			t.Fatal("the ConfigMaps were written by a replica that does not lead")
		}
	})
}
