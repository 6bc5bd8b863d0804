// Package corpus locates Istio's published samples, which CI keeps beside the repository in
// ../shared/corpus/istio-samples: real configs users apply, read by tests and never copied into the project.
package corpus

import (
	"os"
	"path/filepath"
	"testing"
)

// Dir returns the istio-samples directory, failing the test when it is missing.
func Dir(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
	samples := filepath.Join(dir, "..", "shared", "corpus", "istio-samples")
	if _, err := os.Stat(samples); err != nil {
		t.Fatalf("corpus of Istio samples not found: %v", err)
	}
	return samples
}
