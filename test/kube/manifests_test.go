package kube

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/meshd/meshd/pkg/bootstrap"
	"github.com/meshd/meshd/test/kube/kubetest"
)

// applyManifest creates every object of a Kubernetes manifest, in defaultNS when an object names no namespace.
// The API server validates each against its schema. A kind this function does not know fails the test.
func applyManifest(t *testing.T, cs kubernetes.Interface, path, defaultNS string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
	ctx := t.Context()
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc == nil {
			continue
		}
		raw, _ := json.Marshal(doc)
		kind, _ := doc["kind"].(string)
		decode := func(into metav1.Object) {
			if err := json.Unmarshal(raw, into); err != nil {
				t.Fatalf("%s: %s: %v", path, kind, err)
			}
			if into.GetNamespace() == "" {
				into.SetNamespace(defaultNS)
			}
		}
		switch kind {
		case "Namespace":
			var o corev1.Namespace
			decode(&o)
			_, err = cs.CoreV1().Namespaces().Create(ctx, &o, metav1.CreateOptions{})
		case "ServiceAccount":
			var o corev1.ServiceAccount
			decode(&o)
			_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		case "ClusterRole":
			var o rbacv1.ClusterRole
			decode(&o)
			_, err = cs.RbacV1().ClusterRoles().Create(ctx, &o, metav1.CreateOptions{})
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			decode(&o)
			_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
		case "Role":
			var o rbacv1.Role
			decode(&o)
			_, err = cs.RbacV1().Roles(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		case "RoleBinding":
			var o rbacv1.RoleBinding
			decode(&o)
			_, err = cs.RbacV1().RoleBindings(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		case "Service":
			var o corev1.Service
			decode(&o)
			_, err = cs.CoreV1().Services(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		case "Deployment":
			var o appsv1.Deployment
			decode(&o)
			_, err = cs.AppsV1().Deployments(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
		default:
			t.Fatalf("%s: unexpected kind %q: extend this test", path, kind)
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s: %s: %v", path, kind, err)
		}
	}
}

// TestManifestRBACIsEnough runs meshd with nothing but the istiod ServiceAccount's token: the RBAC in
// manifests/istiod.yaml must let it sync every informer, see the Istio config and hold the leader lease.
func TestManifestRBACIsEnough(t *testing.T) {
	c := kubetest.Shared(t)
	cs := c.Clientset
	c.InstallIstioCRDs(t)
	applyManifest(t, cs, filepath.Join("..", "..", "manifests", "istiod.yaml"), "")

	exp := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts("istio-system").CreateToken(t.Context(), "istiod", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: c.RESTConfig.Host, CertificateAuthorityData: c.RESTConfig.CAData}
	if len(c.RESTConfig.CAData) == 0 {
		kc.Clusters["test"].CertificateAuthority = c.RESTConfig.CAFile
	}
	kc.AuthInfos["istiod"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts["istiod"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "istiod"}
	kc.CurrentContext = "istiod"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}

	t.Setenv("POD_NAME", "istiod-rbac-test")
	t.Setenv("POD_NAMESPACE", "istio-system")
	s := newMeshdWith(t, path, "", func(a *bootstrap.Args) { a.SecureGRPCAddr, a.CACertsDir = "127.0.0.1:0", "" })
	eventually(t, time.Minute, "meshd ready", func() bool { return ready(s) })
	eventually(t, time.Minute, "the leader lease", s.IsLeader)
	// The CA's root is in istio-ca-secret, and the leader distributes it to namespaces.
	if _, err := cs.CoreV1().Secrets("istio-system").Get(t.Context(), "istio-ca-secret", metav1.GetOptions{}); err != nil {
		t.Fatalf("istio-ca-secret: %v", err)
	}
	eventually(t, time.Minute, "istio-ca-root-cert in default", func() bool {
		cm, err := cs.CoreV1().ConfigMaps("default").Get(t.Context(), "istio-ca-root-cert", metav1.GetOptions{})
		return err == nil && cm.Data["root-cert.pem"] == string(s.CA().RootPEM())
	})
	if got := metric(t, s, "pilot_services"); got == "" || got == "0" {
		t.Fatalf("pilot_services = %q: the istiod token sees no services", got)
	}
	_, body := get(t, "http://"+s.HTTPListener.String()+"/debug/registryz")
	if !strings.Contains(body, `"hostname": "istiod.istio-system.svc.cluster.local"`) {
		t.Fatalf("registry lacks istiod's own Service:\n%.1500s", body)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
