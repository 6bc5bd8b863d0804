// Package debug serves istiod's /debug endpoints on the HTTP port: who is connected, what each proxy was sent
// and whether it acknowledged it, and what the current push context holds. Handlers only read server state,
// except /debug/adsz?push=true which asks for a full push, as in istiod.
package debug

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/xds"
)

// Server is what the handlers read.
type Server interface {
	Connections() []*xds.Connection
	PushContext() *model.PushContext
	Push(*model.PushRequest)
	QueueLen() int
}

// Register adds the handlers under /debug/ to mux.
func Register(mux *http.ServeMux, s Server) {
	h := &handlers{s: s}
	mux.HandleFunc("GET /debug/adsz", h.adsz)
	mux.HandleFunc("GET /debug/syncz", h.syncz)
	mux.HandleFunc("GET /debug/cdsz", h.resources(model.ClusterType))
	mux.HandleFunc("GET /debug/edsz", h.resources(model.EndpointType))
	mux.HandleFunc("GET /debug/ldsz", h.resources(model.ListenerType))
	mux.HandleFunc("GET /debug/rdsz", h.resources(model.RouteType))
	mux.HandleFunc("GET /debug/config_dump", h.configDump)
	mux.HandleFunc("GET /debug/registryz", h.registryz)
	mux.HandleFunc("GET /debug/configz", h.configz)
	mux.HandleFunc("GET /debug/push_status", h.pushStatus)
	mux.HandleFunc("GET /debug", h.index)
	// Profiles, as on istiod's debug port.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

type handlers struct{ s Server }

func (h *handlers) index(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, map[string]string{
		"/debug/adsz":        "connected proxies and their watches; ?push=true triggers a full push",
		"/debug/syncz":       "per proxy and type: nonce sent, nonce acked, last NACK",
		"/debug/cdsz":        "clusters sent, per proxy (?proxyID=POD.NS)",
		"/debug/edsz":        "endpoints sent, per proxy (?proxyID=POD.NS)",
		"/debug/ldsz":        "listeners sent, per proxy (?proxyID=POD.NS)",
		"/debug/rdsz":        "routes sent, per proxy (?proxyID=POD.NS)",
		"/debug/config_dump": "everything sent to one proxy (?proxyID=POD.NS required)",
		"/debug/registryz":   "services in the current push context",
		"/debug/configz":     "Istio config in the current push context",
		"/debug/push_status": "current push context version and sizes",
	})
}

// matches reports whether a connection is selected by the proxyID query parameter, which may be the full
// node id, "POD.NAMESPACE" or a connection id.
func matches(c *xds.Connection, proxyID string) bool {
	if proxyID == "" {
		return true
	}
	p := c.Proxy()
	return proxyID == p.ID || proxyID == p.Key() || proxyID == c.ID || strings.HasPrefix(c.ID, proxyID+"-")
}

type adsClient struct {
	ConnectionID string              `json:"connectionId"`
	ConnectedAt  time.Time           `json:"connectedAt"`
	Address      string              `json:"address"`
	NodeID       string              `json:"nodeId"`
	ProxyType    string              `json:"proxyType"`
	Namespace    string              `json:"namespace"`
	Workload     string              `json:"workload,omitempty"`
	IPs          []string            `json:"ips"`
	Labels       map[string]string   `json:"labels,omitempty"`
	Generator    string              `json:"generator,omitempty"`
	IstioVersion string              `json:"istioVersion,omitempty"`
	Delta        bool                `json:"delta"`
	Watches      map[string][]string `json:"watches"`
}

func (h *handlers) adsz(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("push") == "true" {
		h.s.Push(model.NewPushRequest(true, model.ReasonDebug))
		writeJSON(w, map[string]string{"pushed": "full push triggered"})
		return
	}
	clients := []adsClient{}
	for _, c := range h.s.Connections() {
		if !matches(c, r.URL.Query().Get("proxyID")) {
			continue
		}
		p := c.Proxy()
		workload, watches := c.Status()
		ac := adsClient{
			ConnectionID: c.ID, ConnectedAt: c.Connected, Address: c.Peer, NodeID: p.ID, ProxyType: string(p.Type),
			Namespace: p.Namespace, Workload: workload, IPs: p.IPAddresses, Labels: p.Metadata.Labels,
			Generator: p.Metadata.Generator, IstioVersion: p.Metadata.IstioVersion, Delta: c.Delta,
			Watches: map[string][]string{},
		}
		for _, ws := range watches {
			names := ws.Names
			if ws.Wildcard {
				names = []string{"*"}
			}
			if names == nil {
				names = []string{}
			}
			ac.Watches[ws.TypeURL] = names
		}
		clients = append(clients, ac)
	}
	writeJSON(w, map[string]any{"totalClients": len(clients), "clients": clients})
}

// syncStatus keeps istiod's field names (istioctl proxy-status reads them) and adds per-type detail.
type syncStatus struct {
	ClusterID     string            `json:"cluster_id,omitempty"`
	ProxyID       string            `json:"proxy"`
	ProxyType     string            `json:"proxy_type"`
	IstioVersion  string            `json:"istio_version,omitempty"`
	ClusterSent   string            `json:"cluster_sent,omitempty"`
	ClusterAcked  string            `json:"cluster_acked,omitempty"`
	ListenerSent  string            `json:"listener_sent,omitempty"`
	ListenerAcked string            `json:"listener_acked,omitempty"`
	RouteSent     string            `json:"route_sent,omitempty"`
	RouteAcked    string            `json:"route_acked,omitempty"`
	EndpointSent  string            `json:"endpoint_sent,omitempty"`
	EndpointAcked string            `json:"endpoint_acked,omitempty"`
	Status        map[string]string `json:"status"`
	Types         []xds.WatchStatus `json:"types"`
}

func (h *handlers) syncz(w http.ResponseWriter, r *http.Request) {
	out := []syncStatus{}
	for _, c := range h.s.Connections() {
		if !matches(c, r.URL.Query().Get("proxyID")) {
			continue
		}
		p := c.Proxy()
		_, watches := c.Status()
		st := syncStatus{ClusterID: p.Metadata.ClusterID, ProxyID: p.Key(), ProxyType: string(p.Type),
			IstioVersion: p.Metadata.IstioVersion, Status: map[string]string{}, Types: watches}
		for _, ws := range watches {
			short := model.ShortType(ws.TypeURL)
			switch ws.TypeURL {
			case model.ClusterType:
				st.ClusterSent, st.ClusterAcked = ws.NonceSent, ws.NonceAcked
			case model.ListenerType:
				st.ListenerSent, st.ListenerAcked = ws.NonceSent, ws.NonceAcked
			case model.RouteType:
				st.RouteSent, st.RouteAcked = ws.NonceSent, ws.NonceAcked
			case model.EndpointType:
				st.EndpointSent, st.EndpointAcked = ws.NonceSent, ws.NonceAcked
			}
			st.Status[short] = syncState(ws)
		}
		out = append(out, st)
	}
	writeJSON(w, out)
}

// syncState is istioctl proxy-status's verdict for one type.
func syncState(ws xds.WatchStatus) string {
	switch {
	case ws.NonceSent == "":
		return "NOT SENT"
	case ws.NackNonce == ws.NonceSent:
		return "NACKED"
	case ws.NonceSent == ws.NonceAcked:
		return "SYNCED"
	default:
		return "STALE"
	}
}

type proxyResources struct {
	ProxyID   string            `json:"proxy"`
	Resources []json.RawMessage `json:"resources"`
}

func (h *handlers) resources(typeURL string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		out := []proxyResources{}
		for _, c := range h.s.Connections() {
			if !matches(c, r.URL.Query().Get("proxyID")) {
				continue
			}
			out = append(out, proxyResources{ProxyID: c.Proxy().Key(), Resources: marshalResources(c.SentResources(typeURL))})
		}
		writeJSON(w, out)
	}
}

func (h *handlers) configDump(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("proxyID")
	if id == "" {
		http.Error(w, "proxyID is required, e.g. ?proxyID=productpage-v1.default", http.StatusBadRequest)
		return
	}
	// A pod can have more than one stream (its proxy's, and its agent's own for DNS or debug requests): dump
	// the one that carries its config.
	var best *xds.Connection
	bestCount := -1
	for _, c := range h.s.Connections() {
		if !matches(c, id) {
			continue
		}
		n := 0
		for _, t := range dumpTypes {
			n += len(c.SentResources(t))
		}
		if n > bestCount {
			best, bestCount = c, n
		}
	}
	if best == nil {
		http.Error(w, "no connected proxy matches proxyID "+id, http.StatusNotFound)
		return
	}
	dump := map[string]any{"proxy": best.Proxy().ID}
	for _, t := range dumpTypes {
		dump[dumpKey(t)] = marshalResources(best.SentResources(t))
	}
	writeJSON(w, dump)
}

var dumpTypes = []string{model.ClusterType, model.EndpointType, model.ListenerType, model.RouteType}

func dumpKey(t string) string {
	switch t {
	case model.ClusterType:
		return "clusters"
	case model.EndpointType:
		return "endpoints"
	case model.ListenerType:
		return "listeners"
	}
	return "routes"
}

var marshal = protojson.MarshalOptions{UseProtoNames: false, EmitUnpopulated: false}

func marshalResources(rs []*discovery.Resource) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(rs))
	for _, r := range rs {
		b, err := marshal.Marshal(r.Resource)
		if err != nil {
			// A typed config whose type is not linked in: still show what it is.
			b, _ = json.Marshal(map[string]string{"name": r.Name, "@type": r.Resource.GetTypeUrl(), "error": err.Error()})
		}
		out = append(out, b)
	}
	return out
}

type serviceView struct {
	Hostname     string            `json:"hostname"`
	Namespace    string            `json:"namespace"`
	Addresses    []string          `json:"addresses,omitempty"`
	Ports        []*model.Port     `json:"ports"`
	Resolution   string            `json:"resolution"`
	MeshExternal bool              `json:"meshExternal,omitempty"`
	Selector     map[string]string `json:"selector,omitempty"`
	Endpoints    int               `json:"endpoints"`
	Source       string            `json:"source,omitempty"`
}

func (h *handlers) registryz(w http.ResponseWriter, _ *http.Request) {
	push := h.s.PushContext()
	out := []serviceView{}
	if push != nil {
		for _, s := range push.AllServices() {
			n := 0
			for _, p := range s.Ports {
				n += len(push.Endpoints(s.Hostname, p.Port))
			}
			out = append(out, serviceView{Hostname: s.Hostname, Namespace: s.Namespace, Addresses: s.Addresses, Ports: s.Ports,
				Resolution: [...]string{"ClientSideLB", "DNSLB", "Passthrough"}[s.Resolution], MeshExternal: s.MeshExternal,
				Selector: s.Selector, Endpoints: n, Source: s.Source})
		}
	}
	writeJSON(w, out)
}

type configView struct {
	Kind      model.Kind      `json:"kind"`
	Namespace string          `json:"namespace"`
	Name      string          `json:"name"`
	Source    string          `json:"source,omitempty"`
	Spec      json.RawMessage `json:"spec"`
}

func (h *handlers) configz(w http.ResponseWriter, _ *http.Request) {
	push := h.s.PushContext()
	out := []configView{}
	if push != nil {
		var all []*model.Config
		for _, vs := range push.AllVirtualServices() {
			all = append(all, vs.Config)
		}
		all = append(all, push.AllDestinationRules()...)
		all = append(all, push.Gateways()...)
		all = append(all, push.AllSidecars()...)
		for _, c := range all {
			spec, err := protojson.Marshal(c.Spec)
			if err != nil {
				spec, _ = json.Marshal(err.Error())
			}
			out = append(out, configView{Kind: c.Kind, Namespace: c.Namespace, Name: c.Name, Source: c.Source, Spec: spec})
		}
	}
	writeJSON(w, out)
}

func (h *handlers) pushStatus(w http.ResponseWriter, _ *http.Request) {
	push := h.s.PushContext()
	if push == nil {
		http.Error(w, "no push context yet", http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, map[string]any{
		"version":     push.Version,
		"built":       push.BuildTime,
		"services":    len(push.AllServices()),
		"endpoints":   push.EndpointCount(),
		"connections": len(h.s.Connections()),
		"queued":      h.s.QueueLen(),
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		slog.Debug("debug response not written", "error", err)
	}
}
