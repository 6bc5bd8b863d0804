package cluster

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	networking "istio.io/api/networking/v1alpha3"
	clientnetv1 "istio.io/client-go/pkg/apis/networking/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/serviceregistry/kube"
)

func TestMain(m *testing.M) {
	// The generated Istio fake cannot stream lists; see the crd package tests.
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	os.Exit(m.Run())
}

func ptr[T any](v T) *T { return &v }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, what, cond)
}

type recorder = testutil.Recorder

func pod(name, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

const (
	reviewsHost = "reviews.shop.svc.cluster.local"
	dbHost      = "db.shop.internal"
)

func TestSourcesMergeRegistryAndConfig(t *testing.T) {
	kc := kubefake.NewClientset(
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}},
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.1", Selector: map[string]string{"app": "reviews"},
				Ports: []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromInt32(8080)}}},
		},
		pod("reviews-1", "10.0.0.1", map[string]string{"app": "reviews"}),
		pod("db-1", "10.0.0.7", map[string]string{"app": "db"}),
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "reviews-x", Labels: map[string]string{kube.LabelServiceName: "reviews"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}}},
		},
	)
	ic := istiofake.NewSimpleClientset(
		&clientnetv1.ServiceEntry{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db"},
			Spec: networking.ServiceEntry{
				Hosts: []string{dbHost}, Location: networking.ServiceEntry_MESH_INTERNAL, Resolution: networking.ServiceEntry_STATIC,
				Ports:            []*networking.ServicePort{{Number: 5432, Name: "tcp", Protocol: "TCP"}},
				WorkloadSelector: &networking.WorkloadSelector{Labels: map[string]string{"app": "db"}},
			},
		},
		&clientnetv1.WorkloadEntry{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "reviews-vm"},
			Spec:       networking.WorkloadEntry{Address: "192.168.1.5", Labels: map[string]string{"app": "reviews"}},
		},
	)
	ic.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if wa, ok := a.(k8stesting.WatchActionImpl); ok {
			opts = wa.ListOptions
		}
		w, err := ic.Tracker().Watch(a.GetResource(), a.GetNamespace(), opts)
		return true, w, err
	})
	// Every kind served at v1.
	ic.Resources = []*metav1.APIResourceList{
		{GroupVersion: "networking.istio.io/v1", APIResources: []metav1.APIResource{
			{Name: "virtualservices"}, {Name: "destinationrules"}, {Name: "gateways"}, {Name: "serviceentries"},
			{Name: "workloadentries"}, {Name: "sidecars"},
		}},
		{GroupVersion: "security.istio.io/v1", APIResources: []metav1.APIResource{{Name: "peerauthentications"}, {Name: "authorizationpolicies"}}},
	}
	pushes := &recorder{}
	src, err := New(kc, ic, Options{OnChange: pushes.Record})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		select {
		case <-src.Done():
		case <-time.After(10 * time.Second):
			t.Error("sources did not stop")
		}
	})
	if err := src.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// HasSynced turns true just before the push of the second source to sync is forwarded.
	waitFor(t, "both sources to sync", func() bool { _, n := pushes.Merged(0); return src.HasSynced() && n >= 2 })
	if !src.Controller().HasSynced() || !src.Store().HasSynced() {
		t.Fatal("synced before its parts")
	}

	d, store := src.Snapshot()
	var hosts []string
	for _, s := range d.Services() {
		hosts = append(hosts, s.Hostname)
	}
	slices.Sort(hosts)
	if !slices.Equal(hosts, []string{dbHost, reviewsHost}) {
		t.Fatalf("services %v", hosts)
	}
	if len(store.List(model.KindServiceEntry)) != 1 || len(src.List(model.KindWorkloadEntry)) != 1 {
		t.Fatal("configs missing")
	}
	// The ServiceEntry's endpoints are the pods it selects; the Kubernetes service also gets the WorkloadEntry.
	if eps := d.Endpoints(dbHost); len(eps) != 1 || eps[0].Address != "10.0.0.7" || eps[0].Port != 5432 {
		t.Fatalf("ServiceEntry endpoints %+v", eps)
	}
	addrs := func(host string) []string {
		var out []string
		for _, e := range src.Endpoints(host) {
			out = append(out, e.Address)
		}
		slices.Sort(out)
		return out
	}
	if got := addrs(reviewsHost); !slices.Equal(got, []string{"10.0.0.1", "192.168.1.5"}) {
		t.Fatalf("reviews endpoints %v", got)
	}
	if !slices.ContainsFunc(src.Workloads(), func(w *model.Workload) bool { return w.Key() == "reviews-vm.shop" && w.Kind == "WorkloadEntry" }) {
		t.Fatal("the WorkloadEntry is not a workload")
	}

	// A pod relabel moves it out of the ServiceEntry: the registry reports the pod; the merge adds the
	// ServiceEntry's endpoints.
	_, n := pushes.Merged(0)
	if _, err := kc.CoreV1().Pods("shop").Update(ctx, pod("db-1", "10.0.0.7", map[string]string{"app": "cache"}), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ServiceEntry endpoints to go", func() bool { return len(src.Endpoints(dbHost)) == 0 })
	var req *model.PushRequest
	waitFor(t, "the push", func() bool {
		req, _ = pushes.Merged(n)
		return req != nil
	})
	if _, ok := req.ConfigsUpdated[model.ConfigKey{Kind: model.KindEndpoints, Name: dbHost, Namespace: "shop"}]; !ok {
		t.Fatalf("push keys %v, want the ServiceEntry's endpoints", req.ConfigsUpdated)
	}

	// A config change goes through as a full push, and the merged view follows it.
	_, n = pushes.Merged(0)
	if err := ic.NetworkingV1().WorkloadEntries("shop").Delete(ctx, "reviews-vm", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the WorkloadEntry endpoint to go", func() bool { return slices.Equal(addrs(reviewsHost), []string{"10.0.0.1"}) })
	waitFor(t, "the push", func() bool {
		req, _ = pushes.Merged(n)
		return req != nil
	})
	if !req.Full {
		t.Fatalf("push %+v", req)
	}
	if _, ok := req.ConfigsUpdated[model.ConfigKey{Kind: model.KindWorkloadEntry, Name: "reviews-vm", Namespace: "shop"}]; !ok {
		t.Fatalf("push keys %v", req.ConfigsUpdated)
	}
	if _, ok := req.ConfigsUpdated[model.ConfigKey{Kind: model.KindEndpoints, Name: reviewsHost, Namespace: "shop"}]; !ok {
		t.Fatalf("push keys %v, want the endpoints the WorkloadEntry left", req.ConfigsUpdated)
	}
}
