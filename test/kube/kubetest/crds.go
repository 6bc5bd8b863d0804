package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallIstioCRDs applies the Istio CRDs that the istio.io/api module meshd
// builds with ships (kubernetes/customresourcedefinitions.gen.yaml) and waits
// until they are established. Applying again is harmless.
func (c *Cluster) InstallIstioCRDs(t testing.TB) {
	t.Helper()
	t0 := time.Now()
	path, err := istioCRDFile()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	names, err := c.ApplyCRDs(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubetest: %d Istio CRDs established in %v", len(names), time.Since(t0).Round(time.Millisecond))
}

// ApplyCRDs applies every CustomResourceDefinition in a YAML file (server-side
// apply) and waits until each is established. It returns their names.
func (c *Cluster) ApplyCRDs(ctx context.Context, path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig)
	if err != nil {
		return nil, err
	}
	crds := dyn.Resource(crdResource)
	var names []string
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		u := &unstructured.Unstructured{Object: obj}
		if obj == nil || u.GetKind() != "CustomResourceDefinition" {
			continue
		}
		if _, err := crds.Apply(ctx, u.GetName(), u, metav1.ApplyOptions{FieldManager: "kubetest", Force: true}); err != nil {
			return nil, fmt.Errorf("%s: applying CRD %s: %w", path, u.GetName(), err)
		}
		names = append(names, u.GetName())
	}

	for _, name := range names {
		for {
			crd, err := crds.Get(ctx, name, metav1.GetOptions{})
			if err == nil && established(crd) {
				break
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("CRD %s not established: %w (last error: %v)", name, ctx.Err(), err)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return names, nil
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// istioCRDFile locates the CRDs in the istio.io/api module required by meshd's go.mod.
func istioCRDFile() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kubetest: go list -m istio.io/api: %v: %s", err, stderr.String())
	}
	return filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml"), nil
}
