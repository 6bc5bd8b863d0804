package main

import (
	"bytes"
	"strings"
	"testing"
)

func run(args ...string) (string, error) {
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestUnknownFlagIsRefusedClearly(t *testing.T) {
	out, err := run("discovery", "--no-such-flag=1")
	if err == nil {
		t.Fatal("unknown flag accepted")
	}
	if !strings.Contains(err.Error(), "unknown flag: --no-such-flag") || !strings.Contains(err.Error(), "--help") {
		t.Fatalf("error %q (output %q) should name the flag and point at --help", err, out)
	}
}

func TestIstiodArgsParse(t *testing.T) {
	// The args of a real istiod Deployment parse; outside a cluster the run then stops at the in-cluster
	// Kubernetes config, as istiod's would, which proves every flag was accepted.
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	_, err := run("discovery", "--monitoringAddr=:15014", "--log_output_level=default:info", "--domain", "cluster.local",
		"--keepaliveMaxServerConnectionAge", "30m", "--log_as_json", "--grpcAddr", ":15010", "--httpAddr", ":8080",
		"--secureGRPCAddr", ":15012", "--httpsAddr", ":15017", "--meshConfig", "/nonexistent/mesh")
	if err == nil || !strings.Contains(err.Error(), "in-cluster service account") || !strings.Contains(err.Error(), "--configDir") {
		t.Fatalf("err = %v, want only the missing in-cluster Kubernetes config, with the --configDir alternative", err)
	}
}

func TestBadLogLevelIsRefused(t *testing.T) {
	_, err := run("discovery", "--configDir", t.TempDir(), "--log_output_level=default:loud")
	if err == nil || !strings.Contains(err.Error(), `unknown level "loud"`) {
		t.Fatalf("err = %v", err)
	}
}
