package model

// StaticDiscovery is an immutable ServiceDiscovery over fixed slices: the snapshot a source publishes, and the
// fixture tests build push contexts from.
type StaticDiscovery struct {
	services  []*Service
	endpoints map[string][]*Endpoint
	workloads []*Workload
}

// NewStaticDiscovery indexes endpoints by hostname. The slices must not be modified afterwards.
func NewStaticDiscovery(services []*Service, endpoints []*Endpoint, workloads []*Workload) *StaticDiscovery {
	d := &StaticDiscovery{services: services, workloads: workloads, endpoints: map[string][]*Endpoint{}}
	for _, e := range endpoints {
		d.endpoints[e.Hostname] = append(d.endpoints[e.Hostname], e)
	}
	return d
}

func (d *StaticDiscovery) Services() []*Service                  { return d.services }
func (d *StaticDiscovery) Endpoints(hostname string) []*Endpoint { return d.endpoints[hostname] }
func (d *StaticDiscovery) Workloads() []*Workload                { return d.workloads }

// StaticConfigStore is an immutable ConfigStore over a fixed list.
type StaticConfigStore struct {
	byKind map[Kind][]*Config
}

// NewStaticConfigStore indexes configs by kind. The configs must not be modified afterwards.
func NewStaticConfigStore(configs []*Config) *StaticConfigStore {
	s := &StaticConfigStore{byKind: map[Kind][]*Config{}}
	for _, c := range configs {
		s.byKind[c.Kind] = append(s.byKind[c.Kind], c)
	}
	return s
}

func (s *StaticConfigStore) List(kind Kind) []*Config { return s.byKind[kind] }
