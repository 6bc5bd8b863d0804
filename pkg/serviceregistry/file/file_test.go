package file

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	networking "istio.io/api/networking/v1alpha3"

	mtest "github.com/meshd/meshd/internal/testutil"
	"github.com/meshd/meshd/pkg/config"
	"github.com/meshd/meshd/pkg/model"
)

const (
	reviewsHost = "reviews.default.svc.cluster.local"
	waitFor     = 10 * time.Second
)

type recorder = mtest.Recorder

// poll checks cond until it holds or the deadline passes.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	mtest.Eventually(t, waitFor, what, cond)
}

func bookinfoDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "..", "samples", "bookinfo"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// copyBookinfo copies the sample into a fresh directory the test may edit.
func copyBookinfo(t *testing.T) string {
	t.Helper()
	src := bookinfoDir(t)
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// save replaces a file the way editors and kubectl-like tools do: write a temporary file, rename it over.
func save(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func edit(t *testing.T, path, old, new string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), old) {
		t.Fatalf("%s does not contain %q", path, old)
	}
	save(t, path, strings.Replace(string(data), old, new, 1))
}

// start runs a source over dir until the test ends.
func start(t *testing.T, dir string) (*Source, *recorder) {
	t.Helper()
	rec := &recorder{}
	src, err := New(dir, "", rec.Record)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := src.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		<-src.Done()
	})
	return src, rec
}

func keys(req *model.PushRequest) []string {
	var out []string
	for k := range req.ConfigsUpdated {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}

func reviewsWeights(src *Source) []int32 {
	for _, c := range src.List(model.KindVirtualService) {
		if c.Name != "reviews" {
			continue
		}
		var w []int32
		for _, r := range c.Spec.(*networking.VirtualService).Http {
			for _, d := range r.Route {
				w = append(w, d.Weight)
			}
		}
		return w
	}
	return nil
}

func rejected(kind string) float64 {
	return testutil.ToFloat64(config.RejectedConfigs.WithLabelValues(kind))
}

// The sample mesh loads as a whole: four services with their VIPs, three reviews endpoints carrying their
// version labels, and DestinationRule subsets that select real endpoints, seen through a push context.
func TestBookinfoSample(t *testing.T) {
	src, err := New(bookinfoDir(t), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	vips := map[string]string{}
	for _, s := range src.Services() {
		vips[s.Hostname] = s.VIP()
		if len(s.Ports) != 1 || s.Ports[0].Port != 9080 || s.Ports[0].Protocol != model.ProtocolHTTP {
			t.Errorf("%s ports %+v", s.Hostname, s.Ports[0])
		}
	}
	wantVIPs := map[string]string{
		"productpage.default.svc.cluster.local": "10.96.0.10",
		"details.default.svc.cluster.local":     "10.96.0.11",
		reviewsHost:                             "10.96.0.12",
		"ratings.default.svc.cluster.local":     "10.96.0.13",
	}
	if fmt.Sprint(vips) != fmt.Sprint(wantVIPs) {
		t.Errorf("services %v, want %v", vips, wantVIPs)
	}

	eps := src.Endpoints(reviewsHost)
	var versions []string
	for _, e := range eps {
		versions = append(versions, e.Labels["version"])
		if e.Port != 9080 || e.ServicePort != 9080 || e.Health != model.Healthy || e.TLSMode != model.TLSModeIstio ||
			e.ServiceAccount != "bookinfo-reviews" || !strings.HasPrefix(e.Address, "10.244.0.") {
			t.Errorf("reviews endpoint %+v", e)
		}
	}
	slices.Sort(versions)
	if fmt.Sprint(versions) != "[v1 v2 v3]" {
		t.Errorf("reviews endpoint versions %v, want [v1 v2 v3]", versions)
	}
	if n := len(src.Workloads()); n != 6 {
		t.Errorf("%d workloads, want 6", n)
	}
	if n := len(src.List(model.KindDestinationRule)); n != 4 {
		t.Errorf("%d DestinationRules, want 4", n)
	}
	if w := reviewsWeights(src); fmt.Sprint(w) != "[0 80 20]" {
		t.Errorf("reviews weights %v, want [0 80 20] (jason route, then 80/20)", w)
	}

	push := model.NewPushContext(&model.Environment{ServiceDiscovery: src, ConfigStore: src, Mesh: model.DefaultMeshConfig()}, nil, nil)
	dr := push.DestinationRule("default", reviewsHost)
	if dr == nil {
		t.Fatal("no DestinationRule for reviews in the push context")
	}
	for _, sub := range dr.Spec.Subsets {
		n := 0
		for _, e := range push.Endpoints(reviewsHost, 9080) {
			if model.LabelsMatch(sub.Labels, e.Labels) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("subset %s selects %d endpoints, want 1", sub.Name, n)
		}
	}
	for _, f := range src.Files() {
		if len(f.Errors) > 0 || f.Objects == 0 {
			t.Errorf("%s: %d objects, errors %v", f.Path, f.Objects, f.Errors)
		}
	}
	if len(src.Files()) != 3 {
		t.Errorf("files %+v", src.Files())
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f.yaml")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ dir, want string }{
		{filepath.Join(dir, "missing"), "missing does not exist"},
		{file, "f.yaml is not a directory"},
	}
	for _, tt := range tests {
		if _, err := New(tt.dir, "", nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%s) error %v, want %q", tt.dir, err, tt.want)
		}
	}
}

// Editing the VirtualService's weights sends a full config push naming it, and List serves the new weights.
func TestEditVirtualService(t *testing.T) {
	dir := copyBookinfo(t)
	src, rec := start(t, dir)
	edit(t, filepath.Join(dir, "virtual-services.yaml"), "weight: 80\n    - destination:\n        host: reviews\n        subset: v2\n      weight: 20",
		"weight: 50\n    - destination:\n        host: reviews\n        subset: v2\n      weight: 50")
	req := rec.Next(t, 0)
	if !req.Full || req.Reason[model.ReasonConfigUpdate] != 1 || fmt.Sprint(keys(req)) != "[VirtualService/default/reviews]" {
		t.Errorf("request full=%v reasons=%v keys=%v", req.Full, req.Reason, keys(req))
	}
	poll(t, "weights 50/50", func() bool { return fmt.Sprint(reviewsWeights(src)) == "[0 50 50]" })
}

// A new Pod IP is an endpoint change of the services selecting the pod, and nothing else.
func TestPodIPChangeIsEndpointPush(t *testing.T) {
	dir := copyBookinfo(t)
	src, rec := start(t, dir)
	edit(t, filepath.Join(dir, "platform.yaml"), "podIP: 10.244.0.13", "podIP: 10.244.0.23")
	req := rec.Next(t, 0)
	if req.Full || req.Reason[model.ReasonEndpointUpdate] != 1 || len(req.Reason) != 1 ||
		fmt.Sprint(keys(req)) != "[Endpoints/default/"+reviewsHost+"]" {
		t.Errorf("request full=%v reasons=%v keys=%v, want an endpoint push for reviews only", req.Full, req.Reason, keys(req))
	}
	var addrs []string
	for _, e := range src.Endpoints(reviewsHost) {
		addrs = append(addrs, e.Address)
	}
	if !slices.Contains(addrs, "10.244.0.23") || slices.Contains(addrs, "10.244.0.13") {
		t.Errorf("reviews endpoints %v", addrs)
	}
}

// A pod relabelled out of a service changes that service's endpoints and the pod's own inbound config.
func TestPodRelabel(t *testing.T) {
	dir := copyBookinfo(t)
	src, rec := start(t, dir)
	edit(t, filepath.Join(dir, "platform.yaml"), "  name: reviews-v3\n  labels:\n    app: reviews\n", "  name: reviews-v3\n  labels:\n    app: reviews-canary\n")
	req := rec.Next(t, 0)
	want := "[Endpoints/default/" + reviewsHost + " Pod/default/reviews-v3]"
	if !req.Full || fmt.Sprint(keys(req)) != want || req.Reason[model.ReasonEndpointUpdate] != 1 {
		t.Errorf("request full=%v reasons=%v keys=%v, want full with %s", req.Full, req.Reason, keys(req), want)
	}
	if n := len(src.Endpoints(reviewsHost)); n != 2 {
		t.Errorf("reviews has %d endpoints, want 2", n)
	}
}

// A file that is not valid YAML keeps its previous objects (and the other files keep serving); an invalid
// object keeps its previous version. Both are counted as rejections and reported in Files.
func TestRejectedEditsKeepPreviousConfig(t *testing.T) {
	dir := copyBookinfo(t)
	src, rec := start(t, dir)
	vsFile := filepath.Join(dir, "virtual-services.yaml")
	good, err := os.ReadFile(vsFile)
	if err != nil {
		t.Fatal(err)
	}

	before := rejected("VirtualService")
	save(t, vsFile, "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews\n")
	poll(t, "a rejection of the malformed file", func() bool { return rejected("VirtualService") == before+1 })
	if fmt.Sprint(reviewsWeights(src)) != "[0 80 20]" {
		t.Errorf("reviews weights %v, want the previous [0 80 20]", reviewsWeights(src))
	}
	if len(src.List(model.KindDestinationRule)) != 4 || len(src.Services()) != 4 {
		t.Error("other files stopped being served")
	}
	if st := fileStatus(src, vsFile); len(st.Errors) != 1 || !strings.Contains(st.Errors[0], "virtual-services.yaml: document 1") ||
		st.Objects != 1 {
		t.Errorf("status %+v", st)
	}

	before = rejected("VirtualService")
	save(t, vsFile, strings.Replace(string(good), "weight: 20", "weight: -20", 1))
	poll(t, "a rejection of the invalid VirtualService", func() bool { return rejected("VirtualService") == before+1 })
	if fmt.Sprint(reviewsWeights(src)) != "[0 80 20]" {
		t.Errorf("reviews weights %v, want the previous [0 80 20]", reviewsWeights(src))
	}
	st := fileStatus(src, vsFile)
	if len(st.Errors) != 1 || !strings.Contains(st.Errors[0], "VirtualService default/reviews: http[1].route[1]: weight must be >= 0") {
		t.Errorf("status %+v", st)
	}
	if n := rec.Count(); n != 0 {
		t.Errorf("%d push requests for rejected edits, want none: %v", n, keys(rec.Next(t, 0)))
	}

	// A fix is served again.
	save(t, vsFile, strings.Replace(string(good), "weight: 20", "weight: 30", 1))
	poll(t, "the fixed VirtualService", func() bool { return fmt.Sprint(reviewsWeights(src)) == "[0 80 30]" })
	if st := fileStatus(src, vsFile); len(st.Errors) != 0 {
		t.Errorf("errors after the fix: %v", st.Errors)
	}
}

func fileStatus(src *Source, path string) FileStatus {
	for _, f := range src.Files() {
		if f.Path == path {
			return f
		}
	}
	return FileStatus{}
}

// Deleting a file removes its objects with a push naming them.
func TestDeleteFile(t *testing.T) {
	dir := copyBookinfo(t)
	src, rec := start(t, dir)
	if err := os.Remove(filepath.Join(dir, "destination-rules.yaml")); err != nil {
		t.Fatal(err)
	}
	req := rec.Next(t, 0)
	want := "[DestinationRule/default/details DestinationRule/default/productpage DestinationRule/default/ratings DestinationRule/default/reviews]"
	if !req.Full || fmt.Sprint(keys(req)) != want {
		t.Errorf("request full=%v keys=%v, want %s", req.Full, keys(req), want)
	}
	if n := len(src.List(model.KindDestinationRule)); n != 0 {
		t.Errorf("%d DestinationRules left", n)
	}
	if len(src.Files()) != 2 {
		t.Errorf("files %+v", src.Files())
	}
}

// Files in a directory created after the start are read and watched.
func TestNewSubdirectory(t *testing.T) {
	dir := copyBookinfo(t)
	src, rec := start(t, dir)
	sub := filepath.Join(dir, "egress", "google")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	se := `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: googleapis}
spec:
  hosts: [www.googleapis.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
`
	save(t, filepath.Join(sub, "se.yaml"), se)
	poll(t, "the ServiceEntry's service", func() bool { return len(src.Services()) == 5 })
	var full bool
	poll(t, "a full push naming the new service", func() bool {
		for i := 0; i < rec.Count(); i++ {
			r := rec.Next(t, i)
			if _, ok := r.ConfigsUpdated[model.ConfigKey{Kind: model.KindService, Name: "www.googleapis.com", Namespace: "default"}]; ok {
				full = r.Full
				return true
			}
		}
		return false
	})
	if !full {
		t.Error("new service was not a full push")
	}
	// The new directory is watched: an edit in it lands too.
	save(t, filepath.Join(sub, "se.yaml"), strings.Replace(se, "number: 443", "number: 8443", 1))
	poll(t, "the edited port", func() bool {
		for _, s := range src.Services() {
			if s.Hostname == "www.googleapis.com" && s.Ports[0].Port == 8443 {
				return true
			}
		}
		return false
	})
}

// The same object in two files is served from the first file in path order; the other is rejected by a
// message naming both files.
func TestDuplicateAcrossFiles(t *testing.T) {
	dir := copyBookinfo(t)
	src, _ := start(t, dir)
	before := rejected("DestinationRule")
	save(t, filepath.Join(dir, "a-override.yaml"), `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
`)
	poll(t, "the duplicate rejection", func() bool { return rejected("DestinationRule") == before+1 })
	for _, c := range src.List(model.KindDestinationRule) {
		if c.Name == "reviews" && len(c.Spec.(*networking.DestinationRule).Subsets) != 1 {
			t.Errorf("reviews DestinationRule from %s, want a-override.yaml's", c.Source)
		}
	}
	st := fileStatus(src, filepath.Join(dir, "destination-rules.yaml"))
	if len(st.Errors) != 1 || !strings.Contains(st.Errors[0], "destination-rules.yaml: DestinationRule default/reviews: already defined in "+
		filepath.Join(dir, "a-override.yaml")) {
		t.Errorf("status %+v", st)
	}
}

// EndpointSlices given for a service replace pod selection for it.
func TestEndpointSlicesWin(t *testing.T) {
	dir := copyBookinfo(t)
	src, rec := start(t, dir)
	save(t, filepath.Join(dir, "slices.yaml"), `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ratings-1
  labels: {kubernetes.io/service-name: ratings}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints:
- addresses: [10.244.1.1]
  conditions: {ready: false, serving: true, terminating: true}
`)
	req := rec.Next(t, 0)
	if req.Full || fmt.Sprint(keys(req)) != "[Endpoints/default/ratings.default.svc.cluster.local]" {
		t.Errorf("request full=%v keys=%v", req.Full, keys(req))
	}
	eps := src.Endpoints("ratings.default.svc.cluster.local")
	if len(eps) != 1 || eps[0].Address != "10.244.1.1" || eps[0].Health != model.Draining || eps[0].TLSMode != model.TLSModeIstio {
		t.Errorf("ratings endpoints %+v", eps)
	}
}

// A Kubernetes ConfigMap volume publishes new contents by swapping its "..data" link; the files the source
// sees are links through it, and the swap is picked up.
func TestConfigMapVolumeSwap(t *testing.T) {
	dir := t.TempDir()
	vs := func(weight string) string {
		return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n" +
			"  http:\n  - route:\n    - {destination: {host: reviews, subset: v1}, weight: " + weight + "}\n" +
			"    - {destination: {host: reviews, subset: v2}, weight: 10}\n"
	}
	writeVersion := func(name, weight string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "vs.yaml"), []byte(vs(weight)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("..2024_01", "90")
	if err := os.Symlink("..2024_01", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("..data", "vs.yaml"), filepath.Join(dir, "vs.yaml")); err != nil {
		t.Fatal(err)
	}
	src, rec := start(t, dir)
	if w := reviewsWeights(src); fmt.Sprint(w) != "[90 10]" {
		t.Fatalf("weights %v, want [90 10]", w)
	}
	writeVersion("..2024_02", "70")
	if err := os.Symlink("..2024_02", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	req := rec.Next(t, 0)
	if !req.Full || fmt.Sprint(keys(req)) != "[VirtualService/default/reviews]" {
		t.Errorf("request full=%v keys=%v", req.Full, keys(req))
	}
	if w := reviewsWeights(src); fmt.Sprint(w) != "[70 10]" {
		t.Errorf("weights %v, want [70 10]", w)
	}
}
