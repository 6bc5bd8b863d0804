package bootstrap

import (
	"fmt"
	"os"

	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// kubeClients are the API clients of the Kubernetes mode.
type kubeClients struct {
	kube     kubernetes.Interface
	istio    istioclient.Interface
	metadata metadata.Interface
	source   string
}

// newKubeClients connects like istiod: --kubeconfig, else $KUBECONFIG, else the in-cluster service account.
func newKubeClients(kubeconfig string) (*kubeClients, error) {
	var (
		cfg    *rest.Config
		err    error
		source string
	)
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		source = "--kubeconfig " + kubeconfig
	case os.Getenv("KUBECONFIG") != "":
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
		source = "$KUBECONFIG"
	default:
		cfg, err = rest.InClusterConfig()
		source = "in-cluster service account"
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client (%s): %w", source, err)
	}
	// istiod's client rates: a control plane lists and watches a lot at start.
	cfg.QPS, cfg.Burst = 80, 160
	cfg.UserAgent = "meshd-discovery"
	c := &kubeClients{source: source}
	if c.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if c.istio, err = istioclient.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("istio client: %w", err)
	}
	if c.metadata, err = metadata.NewForConfig(cfg); err != nil {
		return nil, fmt.Errorf("metadata client: %w", err)
	}
	return c, nil
}
