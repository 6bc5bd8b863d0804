package kube

import (
	"strings"
	"testing"
	"time"

	networking "istio.io/api/networking/v1alpha3"
	istionet "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/test/kube/kubetest"
)

// TestIstioCRDsInstalledLater: meshd on a cluster without the Istio CRDs becomes ready (skipping them), and
// picks them up, with their objects, once they are installed. It needs a cluster of its own.
func TestIstioCRDsInstalledLater(t *testing.T) {
	c := kubetest.Start(t)
	cs := c.Clientset
	createNamespace(t, cs, "istio-system", nil)
	createNamespace(t, cs, "shop", nil)
	if _, err := cs.CoreV1().Services("shop").Create(t.Context(), &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := startMeshd(t, c.Kubeconfig)

	c.InstallIstioCRDs(t)
	ic, err := istioclient.NewForConfig(c.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	vs := &istionet.VirtualService{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop"},
		Spec: networking.VirtualService{Hosts: []string{"web"}, Http: []*networking.HTTPRoute{{
			Route: []*networking.HTTPRouteDestination{{Destination: &networking.Destination{Host: "web"}}}}}}}
	if _, err := ic.NetworkingV1().VirtualServices("shop").Create(t.Context(), vs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "the VirtualService in /debug/configz", func() bool {
		_, body := get(t, "http://"+s.HTTPListener.String()+"/debug/configz")
		return strings.Contains(body, `"kind": "VirtualService"`) && strings.Contains(body, `"name": "web"`)
	})
}
