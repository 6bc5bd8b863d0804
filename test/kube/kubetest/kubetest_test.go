package kubetest_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	networkingv1 "istio.io/api/networking/v1"
	istionetv1 "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/test/kube/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Run(m)) }

const (
	ns      = "kubetest-smoke"
	app     = "details"
	timeout = 30 * time.Second
)

// TestCluster drives the real controllers through the fake kubelet: a
// Deployment's pods become EndpointSlice endpoints, service-account tokens
// carry the istio-ca audience, Istio CRDs serve typed clients, and clients
// work again after the apiserver restarts.
func TestCluster(t *testing.T) {
	c := kubetest.Shared(t)
	cs := c.Clientset
	ctx := t.Context()
	k := c.StartFakeKubelet(t, kubetest.Node{})

	must(t, create(ctx, cs))
	t.Run("EndpointSlices", func(t *testing.T) {
		waitEndpoints(t, cs, 2, k.NodeName())
		scale(t, cs, 3)
		waitEndpoints(t, cs, 3, k.NodeName())
		scale(t, cs, 1) // graceful deletion, finished by the fake kubelet
		waitEndpoints(t, cs, 1, k.NodeName())
	})

	t.Run("TokenRequest", func(t *testing.T) {
		exp := int64(3600)
		tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, app, &authnv1.TokenRequest{
			Spec: authnv1.TokenRequestSpec{Audiences: []string{"istio-ca"}, ExpirationSeconds: &exp},
		}, metav1.CreateOptions{})
		must(t, err)
		review := func(aud string) *authnv1.TokenReview {
			r, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
				Spec: authnv1.TokenReviewSpec{Token: tr.Status.Token, Audiences: []string{aud}},
			}, metav1.CreateOptions{})
			must(t, err)
			return r
		}
		r := review("istio-ca")
		want := "system:serviceaccount:" + ns + ":" + app
		if !r.Status.Authenticated || r.Status.User.Username != want || !slices.Contains(r.Status.Audiences, "istio-ca") {
			t.Fatalf("TokenReview(istio-ca) = %+v, want authenticated as %s", r.Status, want)
		}
		if r := review("someone-else"); r.Status.Authenticated {
			t.Fatalf("TokenReview(someone-else) authenticated a token for istio-ca: %+v", r.Status)
		}
	})

	t.Run("IstioCRDs", func(t *testing.T) {
		c.InstallIstioCRDs(t)
		ic, err := istioclient.NewForConfig(c.RESTConfig)
		must(t, err)
		vs := &istionetv1.VirtualService{
			ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: ns},
			Spec: networkingv1.VirtualService{
				Hosts: []string{app},
				Http: []*networkingv1.HTTPRoute{{Route: []*networkingv1.HTTPRouteDestination{{
					Destination: &networkingv1.Destination{Host: app, Port: &networkingv1.PortSelector{Number: 9080}},
				}}}},
			},
		}
		_, err = ic.NetworkingV1().VirtualServices(ns).Create(ctx, vs, metav1.CreateOptions{})
		must(t, err)
		got, err := ic.NetworkingV1().VirtualServices(ns).Get(ctx, app, metav1.GetOptions{})
		must(t, err)
		if !slices.Equal(got.Spec.Hosts, []string{app}) || got.Spec.Http[0].Route[0].Destination.Port.Number != 9080 {
			t.Fatalf("read back VirtualService spec %v", &got.Spec)
		}
	})

	t.Run("RestartAPIServer", func(t *testing.T) {
		c.RestartAPIServer(t)
		kubetest.Eventually(t, timeout, func() error {
			_, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			return err
		})
		// The controller manager and the fake kubelet reconnected too.
		scale(t, cs, 2)
		waitEndpoints(t, cs, 2, k.NodeName())
	})
	if t.Failed() {
		for _, p := range []string{"kube-apiserver", "kube-controller-manager"} {
			t.Logf("%s:\n%s", p, c.Logs(p, 30))
		}
	}
}

// TestStartStop: a cluster of its own answers, and leaves no directory and no
// listening apiserver once its test is over.
func TestStartStop(t *testing.T) {
	var c *kubetest.Cluster
	t.Run("Start", func(t *testing.T) {
		c = kubetest.Start(t)
		v, err := c.Clientset.Discovery().ServerVersion()
		must(t, err)
		t.Logf("kube-apiserver %s", v.GitVersion)
	})
	if c == nil || t.Failed() {
		return
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after the test: %v", c.Dir, err)
	}
	if _, err := c.Clientset.Discovery().ServerVersion(); err == nil {
		t.Errorf("kube-apiserver at %s still answers after the test", c.RESTConfig.Host)
	}
}

func create(ctx context.Context, cs kubernetes.Interface) error {
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: app}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	labels := map[string]string{"app": app}
	replicas := int32(2)
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: app, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: app,
					Containers: []corev1.Container{{
						Name: app, Image: "docker.io/istio/examples-bookinfo-details-v1:1.20.3",
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9080}},
					}},
				},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: app, Labels: labels},
		Spec: corev1.ServiceSpec{
			Selector: labels,
			Ports:    []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromInt32(9080)}},
		},
	}, metav1.CreateOptions{})
	return err
}

func scale(t *testing.T, cs kubernetes.Interface, n int) {
	t.Helper()
	patch := fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, n)
	_, err := cs.AppsV1().Deployments(ns).Patch(t.Context(), app, types.MergePatchType, patch, metav1.PatchOptions{})
	must(t, err)
}

// waitEndpoints waits until the Service's EndpointSlices list exactly n
// endpoints, all ready, on node, in the fake kubelet's zone and pod CIDR.
func waitEndpoints(t *testing.T, cs kubernetes.Interface, n int, node string) {
	t.Helper()
	kubetest.Eventually(t, timeout, func() error {
		list, err := cs.DiscoveryV1().EndpointSlices(ns).List(t.Context(), metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=" + app,
		})
		if err != nil {
			return err
		}
		var eps []string
		for _, s := range list.Items {
			for _, ep := range s.Endpoints {
				ready := ep.Conditions.Ready != nil && *ep.Conditions.Ready
				if !ready || ep.NodeName == nil || *ep.NodeName != node || ep.Zone == nil || *ep.Zone != "zone-1" ||
					!strings.HasPrefix(ep.Addresses[0], "10.244.") {
					return fmt.Errorf("endpoint %v ready=%v node=%v zone=%v", ep.Addresses, ready, deref(ep.NodeName), deref(ep.Zone))
				}
				eps = append(eps, ep.Addresses[0])
			}
		}
		if len(eps) != n {
			return fmt.Errorf("%d EndpointSlices list endpoints %v, want %d ready", len(list.Items), eps, n)
		}
		return nil
	})
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
