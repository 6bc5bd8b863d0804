package file

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshd/meshd/pkg/config"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/serviceregistry/kube"
	"github.com/meshd/meshd/pkg/serviceregistry/serviceentry"
)

// snapshot is one immutable state of the model as built from the files, with the indexes diff needs.
type snapshot struct {
	disc  *model.StaticDiscovery
	store *model.StaticConfigStore

	configs   map[model.ConfigKey]*model.Config
	services  map[svcKey][]*model.Service
	endpoints map[string][]*model.Endpoint // by hostname, as StaticDiscovery serves them
	hostNS    map[string]string            // hostname -> namespace of its first service
	// pods are the pods present ("namespace/name"); selectors maps each to the sorted hostnames of the services
	// selecting it.
	pods      map[string]bool
	selectors map[string][]string
}

type svcKey struct {
	Hostname  string
	Namespace string
}

func emptySnapshot() *snapshot {
	return &snapshot{
		disc:  model.NewStaticDiscovery(nil, nil, nil),
		store: model.NewStaticConfigStore(nil),
	}
}

// duplicate is an object defined again in a later file.
type duplicate struct {
	path, first string
	key         objKey
}

// buildSnapshot converts the accepted objects of every file into the model. Files are taken in lexical path
// order; an object already defined by an earlier file is a duplicate and left out.
func (s *Source) buildSnapshot() (*snapshot, []duplicate) {
	var (
		dups      []duplicate
		owner     = map[objKey]string{}
		configs   []*model.Config
		services  []*model.Service
		workloads []*model.Workload
		endpoints []*model.Endpoint
		slicesFor = map[string][]*discoveryv1.EndpointSlice{} // by "namespace/service"
		kubeSvcs  []*model.Service
		entries   []*model.Config
	)
	for _, path := range model.SortedKeys(s.files) {
		st := s.files[path]
		st.duplicates = nil
		for _, o := range st.objects {
			if first, taken := owner[o.key]; taken {
				dups = append(dups, duplicate{path: path, first: first, key: o.key})
				st.duplicates = append(st.duplicates, duplicateMessage(path, first, o.key))
				continue
			}
			owner[o.key] = path
			switch {
			case o.config != nil:
				configs = append(configs, o.config)
				switch o.config.Kind {
				case model.KindServiceEntry:
					entries = append(entries, o.config)
				case model.KindWorkloadEntry:
					if w := serviceentry.ConvertWorkloadEntry(o.config); w != nil {
						workloads = append(workloads, w)
					}
				}
			case o.svc != nil:
				svc := kube.ConvertService(o.svc, s.domainSuffix)
				svc.Source = "file:" + path
				kubeSvcs = append(kubeSvcs, svc)
			case o.pod != nil:
				if w := kube.ConvertPod(o.pod); w != nil {
					if _, labelled := o.pod.Labels[kube.LabelTLSMode]; !labelled {
						w.TLSMode = model.TLSModeIstio // file mode: workloads are assumed to run a sidecar
					}
					workloads = append(workloads, w)
				}
			case o.slice != nil:
				k := o.slice.Namespace + "/" + o.slice.Labels[kube.LabelServiceName]
				slicesFor[k] = append(slicesFor[k], o.slice)
			}
		}
	}

	byNamespace := map[string][]*model.Workload{}
	podsByIP := map[string]*model.Workload{}
	for _, w := range workloads {
		byNamespace[w.Namespace] = append(byNamespace[w.Namespace], w)
		if w.Kind == "Pod" && w.IP != "" {
			podsByIP[w.IP] = w
		}
	}
	for _, svc := range kubeSvcs {
		services = append(services, svc)
		if sl := slicesFor[svc.Namespace+"/"+svc.Name]; len(sl) > 0 {
			eps := kube.EndpointsFromSlices(svc, sl, podsByIP)
			for _, e := range eps {
				if podsByIP[e.Address] == nil {
					e.TLSMode = model.TLSModeIstio // file mode assumption, as for pods
				}
			}
			endpoints = append(endpoints, eps...)
			continue
		}
		endpoints = append(endpoints, kube.EndpointsFromPods(svc, byNamespace[svc.Namespace])...)
	}
	for _, cfg := range entries {
		svcs := serviceentry.ConvertServices(cfg)
		for _, svc := range svcs {
			svc.Source = "file:" + cfg.Source
		}
		services = append(services, svcs...)
		endpoints = append(endpoints, serviceentry.Endpoints(cfg, svcs, byNamespace[cfg.Namespace])...)
	}

	slices.SortStableFunc(services, func(a, b *model.Service) int {
		return cmp.Or(cmp.Compare(a.Hostname, b.Hostname), cmp.Compare(a.Namespace, b.Namespace))
	})
	slices.SortFunc(workloads, func(a, b *model.Workload) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Kind, b.Kind))
	})

	snap := &snapshot{
		disc:      model.NewStaticDiscovery(services, endpoints, workloads),
		store:     model.NewStaticConfigStore(configs),
		configs:   make(map[model.ConfigKey]*model.Config, len(configs)),
		services:  map[svcKey][]*model.Service{},
		endpoints: map[string][]*model.Endpoint{},
		hostNS:    map[string]string{},
		pods:      map[string]bool{},
		selectors: map[string][]string{},
	}
	for _, w := range workloads {
		if w.Kind == "Pod" {
			snap.pods[w.Namespace+"/"+w.Name] = true
		}
	}
	for _, c := range configs {
		snap.configs[c.Key()] = c
	}
	for _, svc := range services {
		k := svcKey{svc.Hostname, svc.Namespace}
		snap.services[k] = append(snap.services[k], svc)
		if _, ok := snap.hostNS[svc.Hostname]; !ok {
			snap.hostNS[svc.Hostname] = svc.Namespace
			snap.endpoints[svc.Hostname] = snap.disc.Endpoints(svc.Hostname)
		}
		if svc.Selector == nil {
			continue
		}
		for _, w := range byNamespace[svc.Namespace] {
			if w.Kind == "Pod" && model.SelectedBy(svc.Selector, w.Labels) {
				k := w.Namespace + "/" + w.Name
				snap.selectors[k] = append(snap.selectors[k], svc.Hostname)
			}
		}
	}
	for k, hosts := range snap.selectors {
		slices.Sort(hosts)
		snap.selectors[k] = hosts
	}
	return snap, dups
}

func duplicateMessage(path, first string, k objKey) string {
	return fmt.Sprintf("%s: %s: already defined in %s, which wins (first in path order)", path, k, first)
}

// reportDuplicates logs and counts duplicates not reported before, and forgets those that are gone.
func (s *Source) reportDuplicates(dups []duplicate) {
	current := make(map[string]bool, len(dups))
	for _, d := range dups {
		id := d.path + "|" + d.key.String()
		current[id] = true
		if s.dups[id] {
			continue
		}
		config.RecordRejected(d.key.Kind)
		slog.Warn("file source: rejected duplicate object", "file", d.path, "kind", d.key.Kind, "name", nsName(d.key),
			"error", duplicateMessage(d.path, d.first, d.key))
	}
	s.dups = current
}

// diff describes the change from prev to next as one push request, or nil when the model did not change:
//   - Istio configs added, removed or changed: full push, reason config, their keys;
//   - services added, removed or changed: full push, reason service, KindService keys named by hostname;
//   - pods whose set of selecting services changed: full push (their inbound config changes), KindPod keys;
//   - endpoint lists that changed: reason endpoint, KindEndpoints keys; a push of its own (not full) when
//     nothing else changed.
func diff(prev, next *snapshot) *model.PushRequest {
	var req *model.PushRequest
	var keys []model.ConfigKey
	for k, c := range next.configs {
		if o := prev.configs[k]; o == nil || !sameConfig(o, c) {
			keys = append(keys, k)
		}
	}
	for k := range prev.configs {
		if next.configs[k] == nil {
			keys = append(keys, k)
		}
	}
	if len(keys) > 0 {
		req = req.Merge(model.NewPushRequest(true, model.ReasonConfigUpdate, keys...))
	}

	keys = nil
	for k, svcs := range next.services {
		if !sameServices(prev.services[k], svcs) {
			keys = append(keys, model.ConfigKey{Kind: model.KindService, Name: k.Hostname, Namespace: k.Namespace})
		}
	}
	for k := range prev.services {
		if _, ok := next.services[k]; !ok {
			keys = append(keys, model.ConfigKey{Kind: model.KindService, Name: k.Hostname, Namespace: k.Namespace})
		}
	}
	if len(keys) > 0 {
		req = req.Merge(model.NewPushRequest(true, model.ReasonServiceUpdate, keys...))
	}

	keys = nil
	for pod := range next.pods {
		if prev.pods[pod] && !slices.Equal(prev.selectors[pod], next.selectors[pod]) {
			ns, name, _ := strings.Cut(pod, "/")
			keys = append(keys, model.ConfigKey{Kind: model.KindPod, Name: name, Namespace: ns})
		}
	}
	if len(keys) > 0 {
		req = req.Merge(model.NewPushRequest(true, model.ReasonProxyUpdate, keys...))
	}

	keys = nil
	for h, eps := range next.endpoints {
		if !reflect.DeepEqual(prev.endpoints[h], eps) {
			keys = append(keys, model.ConfigKey{Kind: model.KindEndpoints, Name: h, Namespace: next.hostNS[h]})
		}
	}
	for h, eps := range prev.endpoints {
		if _, ok := next.endpoints[h]; !ok && len(eps) > 0 {
			keys = append(keys, model.ConfigKey{Kind: model.KindEndpoints, Name: h, Namespace: prev.hostNS[h]})
		}
	}
	if len(keys) > 0 {
		req = req.Merge(model.NewPushRequest(false, model.ReasonEndpointUpdate, keys...))
	}
	return req
}

func sameConfig(a, b *model.Config) bool {
	return proto.Equal(a.Spec, b.Spec) && maps.Equal(a.Labels, b.Labels) && maps.Equal(a.Annotations, b.Annotations) &&
		a.ResourceVersion == b.ResourceVersion && a.CreationTimestamp.Equal(b.CreationTimestamp)
}

// sameServices compares services ignoring Source: moving a Service to another file changes nothing served.
func sameServices(a, b []*model.Service) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := *a[i], *b[i]
		x.Source, y.Source = "", ""
		if !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}
