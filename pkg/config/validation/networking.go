package validation

import (
	"net/netip"
	"strconv"
	"strings"

	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
)

func (v *validator) destinationRule(dr *networking.DestinationRule) {
	if dr.Host == "" {
		v.errf("host", "is required")
	} else {
		v.host("host", dr.Host, true)
	}
	v.exportTo("exportTo", dr.ExportTo)
	if dr.WorkloadSelector != nil {
		if len(dr.WorkloadSelector.MatchLabels) == 0 {
			v.errf("workloadSelector.matchLabels", "must not be empty when workloadSelector is set")
		}
		v.labels("workloadSelector.matchLabels", dr.WorkloadSelector.MatchLabels)
	}
	v.trafficPolicy("trafficPolicy", dr.TrafficPolicy)
	seen := map[string]int{}
	for i, s := range dr.Subsets {
		p := idx("subsets", i)
		switch {
		case s.Name == "":
			v.errf(join(p, "name"), "is required")
		case !isDNSLabel(s.Name):
			v.errf(join(p, "name"), "%q is not a valid subset name (RFC 1123 label)", s.Name)
		}
		if first, dup := seen[s.Name]; dup && s.Name != "" {
			v.errf(join(p, "name"), "subset %q is already defined by subsets[%d]", s.Name, first)
		} else {
			seen[s.Name] = i
		}
		if len(s.Labels) == 0 {
			v.errf(join(p, "labels"), "subset %q has no labels", s.Name)
		}
		v.labels(join(p, "labels"), s.Labels)
		v.trafficPolicy(join(p, "trafficPolicy"), s.TrafficPolicy)
	}
}

func (v *validator) trafficPolicy(path string, tp *networking.TrafficPolicy) {
	if tp == nil {
		return
	}
	v.loadBalancer(join(path, "loadBalancer"), tp.LoadBalancer)
	v.connectionPool(join(path, "connectionPool"), tp.ConnectionPool)
	v.outlierDetection(join(path, "outlierDetection"), tp.OutlierDetection)
	v.clientTLS(join(path, "tls"), tp.Tls)
	ports := map[uint32]int{}
	for i, pl := range tp.PortLevelSettings {
		p := idx(join(path, "portLevelSettings"), i)
		if pl.Port == nil || pl.Port.Number == 0 {
			v.errf(join(p, "port"), "port-level settings need a port number")
		} else {
			v.port(join(p, "port.number"), pl.Port.Number)
			if first, dup := ports[pl.Port.Number]; dup {
				v.errf(join(p, "port.number"), "port %d already has settings in portLevelSettings[%d]", pl.Port.Number, first)
			} else {
				ports[pl.Port.Number] = i
			}
		}
		v.loadBalancer(join(p, "loadBalancer"), pl.LoadBalancer)
		v.connectionPool(join(p, "connectionPool"), pl.ConnectionPool)
		v.outlierDetection(join(p, "outlierDetection"), pl.OutlierDetection)
		v.clientTLS(join(p, "tls"), pl.Tls)
	}
}

func (v *validator) loadBalancer(path string, lb *networking.LoadBalancerSettings) {
	if lb == nil {
		return
	}
	switch t := lb.LbPolicy.(type) {
	case *networking.LoadBalancerSettings_Simple:
		v.enum(join(path, "simple"), t.Simple)
	case *networking.LoadBalancerSettings_ConsistentHash:
		ch := t.ConsistentHash
		cp := join(path, "consistentHash")
		switch k := ch.GetHashKey().(type) {
		case *networking.LoadBalancerSettings_ConsistentHashLB_HttpHeaderName:
			if k.HttpHeaderName == "" {
				v.errf(join(cp, "httpHeaderName"), "must not be empty")
			}
		case *networking.LoadBalancerSettings_ConsistentHashLB_HttpCookie:
			if k.HttpCookie.GetName() == "" {
				v.errf(join(cp, "httpCookie.name"), "is required")
			}
			if ttl := k.HttpCookie.GetTtl(); ttl != nil {
				if err := ttl.CheckValid(); err != nil || ttl.AsDuration() < 0 {
					v.errf(join(cp, "httpCookie.ttl"), "must be a duration >= 0")
				}
			}
		case *networking.LoadBalancerSettings_ConsistentHashLB_HttpQueryParameterName:
			if k.HttpQueryParameterName == "" {
				v.errf(join(cp, "httpQueryParameterName"), "must not be empty")
			}
		}
	}
	if l := lb.LocalityLbSetting; l != nil {
		lp := join(path, "localityLbSetting")
		if len(l.Distribute) > 0 && len(l.Failover) > 0 {
			v.errf(lp, "distribute and failover are mutually exclusive")
		}
		for i, d := range l.Distribute {
			dp := idx(join(lp, "distribute"), i)
			if d.From == "" {
				v.errf(join(dp, "from"), "is required")
			}
			total := uint64(0)
			for _, w := range d.To {
				total += uint64(w)
			}
			if total != 100 {
				v.errf(join(dp, "to"), "weights must add up to 100, got %d", total)
			}
		}
		for i, f := range l.Failover {
			fp := idx(join(lp, "failover"), i)
			if f.From == "" || f.To == "" {
				v.errf(fp, "from and to are required")
			} else if f.From == f.To {
				v.errf(fp, "from and to must differ")
			}
		}
	}
	v.duration(join(path, "warmupDurationSecs"), lb.WarmupDurationSecs)
	if w := lb.Warmup; w != nil {
		v.duration(join(path, "warmup.duration"), w.Duration)
		if w.MinimumPercent != nil {
			v.percent(join(path, "warmup.minimumPercent"), w.MinimumPercent.Value)
		}
	}
}

func (v *validator) connectionPool(path string, cp *networking.ConnectionPoolSettings) {
	if cp == nil {
		return
	}
	if t := cp.Tcp; t != nil {
		tp := join(path, "tcp")
		v.nonNegative(join(tp, "maxConnections"), t.MaxConnections)
		v.duration(join(tp, "connectTimeout"), t.ConnectTimeout)
		v.duration(join(tp, "maxConnectionDuration"), t.MaxConnectionDuration)
		v.duration(join(tp, "idleTimeout"), t.IdleTimeout)
		if ka := t.TcpKeepalive; ka != nil {
			v.duration(join(tp, "tcpKeepalive.time"), ka.Time)
			v.duration(join(tp, "tcpKeepalive.interval"), ka.Interval)
		}
	}
	if h := cp.Http; h != nil {
		hp := join(path, "http")
		v.nonNegative(join(hp, "http1MaxPendingRequests"), h.Http1MaxPendingRequests)
		v.nonNegative(join(hp, "http2MaxRequests"), h.Http2MaxRequests)
		v.nonNegative(join(hp, "maxRequestsPerConnection"), h.MaxRequestsPerConnection)
		v.nonNegative(join(hp, "maxRetries"), h.MaxRetries)
		v.nonNegative(join(hp, "maxConcurrentStreams"), h.MaxConcurrentStreams)
		v.duration(join(hp, "idleTimeout"), h.IdleTimeout)
		v.enum(join(hp, "h2UpgradePolicy"), h.H2UpgradePolicy)
	}
}

func (v *validator) outlierDetection(path string, od *networking.OutlierDetection) {
	if od == nil {
		return
	}
	v.nonNegative(join(path, "consecutiveErrors"), od.ConsecutiveErrors)
	v.duration(join(path, "interval"), od.Interval)
	v.duration(join(path, "baseEjectionTime"), od.BaseEjectionTime)
	if od.MaxEjectionPercent < 0 || od.MaxEjectionPercent > 100 {
		v.errf(join(path, "maxEjectionPercent"), "%d must be in 0..100", od.MaxEjectionPercent)
	}
	if od.MinHealthPercent < 0 || od.MinHealthPercent > 100 {
		v.errf(join(path, "minHealthPercent"), "%d must be in 0..100", od.MinHealthPercent)
	}
}

func (v *validator) clientTLS(path string, t *networking.ClientTLSSettings) {
	if t == nil {
		return
	}
	v.enum(join(path, "mode"), t.Mode)
	files := t.ClientCertificate != "" || t.PrivateKey != "" || t.CaCertificates != ""
	switch t.Mode {
	case networking.ClientTLSSettings_DISABLE, networking.ClientTLSSettings_ISTIO_MUTUAL:
		if files || t.CredentialName != "" {
			v.errf(path, "mode %s uses no certificates: remove clientCertificate, privateKey, caCertificates and credentialName", t.Mode)
		}
	case networking.ClientTLSSettings_MUTUAL:
		if t.CredentialName == "" && (t.ClientCertificate == "" || t.PrivateKey == "") {
			v.errf(path, "mode MUTUAL needs credentialName, or clientCertificate and privateKey")
		}
	}
	if t.CredentialName != "" && files {
		v.errf(path, "credentialName cannot be combined with clientCertificate, privateKey or caCertificates")
	}
}

func (v *validator) gateway(g *networking.Gateway) {
	if len(g.Servers) == 0 {
		v.errf("servers", "at least one server is required")
	}
	v.labels("selector", g.Selector)
	names := map[string]int{}
	for i, s := range g.Servers {
		p := idx("servers", i)
		if s.Name != "" {
			if first, dup := names[s.Name]; dup {
				v.errf(join(p, "name"), "server name %q is already used by servers[%d]", s.Name, first)
			} else {
				names[s.Name] = i
			}
		}
		var proto model.Protocol
		if s.Port == nil {
			v.errf(join(p, "port"), "is required")
		} else {
			v.port(join(p, "port.number"), s.Port.Number)
			if s.Port.Protocol == "" {
				v.errf(join(p, "port.protocol"), "is required")
			} else {
				v.protocol(join(p, "port.protocol"), s.Port.Protocol)
			}
			if s.Port.TargetPort != 0 {
				v.port(join(p, "port.targetPort"), s.Port.TargetPort)
			}
			proto = model.ParseProtocol(s.Port.Protocol)
		}
		if len(s.Hosts) == 0 {
			v.errf(join(p, "hosts"), "at least one host is required")
		}
		for j, h := range s.Hosts {
			v.namespacedHost(idx(join(p, "hosts"), j), h, false)
		}
		if s.Bind != "" && !strings.HasPrefix(s.Bind, "unix://") {
			if _, err := netip.ParseAddr(s.Bind); err != nil {
				v.errf(join(p, "bind"), "%q is not an IP address or unix:// path", s.Bind)
			}
		}
		if s.Port != nil {
			v.serverTLS(join(p, "tls"), proto, s.Tls)
		}
	}
}

// namespacedHost checks "ns/host" or (when nsRequired is false) "host". The namespace is a name, "*", "." or
// "~"; the host a DNS name, "*.suffix" or "*".
func (v *validator) namespacedHost(path, h string, nsRequired bool) {
	ns, host, ok := strings.Cut(h, "/")
	if !ok {
		if nsRequired {
			v.errf(path, "%q must be of the form namespace/host (\"*/host\" for any namespace, \"./host\" for this one)", h)
			return
		}
		ns, host = "*", h
	}
	if ns != "*" && ns != "." && ns != "~" && !isDNSLabel(ns) {
		v.errf(path, "%q: namespace %q is not a namespace name, \"*\", \".\" or \"~\"", h, ns)
	}
	if p := hostProblem(host, true); p != "" {
		v.errf(path, "%s", p)
	}
}

func (v *validator) serverTLS(path string, proto model.Protocol, t *networking.ServerTLSSettings) {
	terminates := proto == model.ProtocolHTTPS || proto == model.ProtocolTLS
	if t == nil {
		if terminates {
			v.errf(path, "servers with protocol %s need tls settings", proto)
		}
		return
	}
	v.enum(join(path, "mode"), t.Mode)
	certs := t.ServerCertificate != "" || t.PrivateKey != "" || t.CaCertificates != "" || t.CredentialName != "" ||
		len(t.CredentialNames) > 0 || len(t.TlsCertificates) > 0 || t.CaCertCredentialName != ""
	if !terminates {
		if t.Mode != networking.ServerTLSSettings_PASSTHROUGH || certs {
			v.errf(path, "TLS settings other than httpsRedirect only apply to HTTPS and TLS servers, not %s", proto)
		}
		if t.HttpsRedirect && !proto.IsHTTP() {
			v.errf(join(path, "httpsRedirect"), "only applies to HTTP servers")
		}
		return
	}
	switch t.Mode {
	case networking.ServerTLSSettings_SIMPLE, networking.ServerTLSSettings_MUTUAL, networking.ServerTLSSettings_OPTIONAL_MUTUAL:
		byFile := t.ServerCertificate != "" || t.PrivateKey != ""
		byCredential := t.CredentialName != "" || len(t.CredentialNames) > 0 || len(t.TlsCertificates) > 0
		switch {
		case !byFile && !byCredential:
			v.errf(path, "mode %s needs credentialName, or serverCertificate and privateKey", t.Mode)
		case byFile && (t.ServerCertificate == "" || t.PrivateKey == ""):
			v.errf(path, "serverCertificate and privateKey must be given together")
		case byFile && byCredential:
			v.errf(path, "credentialName cannot be combined with serverCertificate and privateKey")
		}
		if t.Mode != networking.ServerTLSSettings_SIMPLE && !byCredential && t.CaCertificates == "" && t.CaCertCredentialName == "" {
			v.errf(join(path, "caCertificates"), "mode %s needs caCertificates (or credentialName) to verify clients", t.Mode)
		}
	case networking.ServerTLSSettings_PASSTHROUGH, networking.ServerTLSSettings_ISTIO_MUTUAL:
		if certs {
			v.errf(path, "mode %s uses no certificates of its own: remove serverCertificate, privateKey, caCertificates and credentialName", t.Mode)
		}
	case networking.ServerTLSSettings_AUTO_PASSTHROUGH:
		if proto != model.ProtocolTLS {
			v.errf(join(path, "mode"), "AUTO_PASSTHROUGH needs protocol TLS, not %s", proto)
		}
		if certs {
			v.errf(path, "mode AUTO_PASSTHROUGH uses no certificates: remove them")
		}
	}
	v.enum(join(path, "minProtocolVersion"), t.MinProtocolVersion)
	v.enum(join(path, "maxProtocolVersion"), t.MaxProtocolVersion)
	if t.MinProtocolVersion != networking.ServerTLSSettings_TLS_AUTO && t.MaxProtocolVersion != networking.ServerTLSSettings_TLS_AUTO &&
		t.MinProtocolVersion > t.MaxProtocolVersion {
		v.errf(path, "minProtocolVersion %s is above maxProtocolVersion %s", t.MinProtocolVersion, t.MaxProtocolVersion)
	}
}

func (v *validator) serviceEntry(se *networking.ServiceEntry) {
	if len(se.Hosts) == 0 {
		v.errf("hosts", "at least one host is required")
	}
	wildcard := false
	for i, h := range se.Hosts {
		if h == "*" {
			v.errf(idx("hosts", i), `host "*" is not allowed in a ServiceEntry`)
			continue
		}
		v.host(idx("hosts", i), h, false)
		wildcard = wildcard || strings.HasPrefix(h, "*")
	}
	for i, a := range se.Addresses {
		v.ipOrCIDR(idx("addresses", i), a)
	}
	v.enum("location", se.Location)
	v.enum("resolution", se.Resolution)
	v.exportTo("exportTo", se.ExportTo)
	portNames := map[string]bool{}
	numbers := map[uint32]int{}
	for i, p := range se.Ports {
		pp := idx("ports", i)
		v.port(join(pp, "number"), p.Number)
		if first, dup := numbers[p.Number]; dup {
			v.errf(join(pp, "number"), "port %d is already defined by ports[%d]", p.Number, first)
		} else {
			numbers[p.Number] = i
		}
		switch {
		case p.Name == "":
			v.errf(join(pp, "name"), "is required")
		case portNames[p.Name]:
			v.errf(join(pp, "name"), "port name %q is used twice", p.Name)
		}
		portNames[p.Name] = true
		v.protocol(join(pp, "protocol"), p.Protocol)
		if p.TargetPort != 0 {
			v.port(join(pp, "targetPort"), p.TargetPort)
		}
	}
	if se.WorkloadSelector != nil {
		if len(se.Endpoints) > 0 {
			v.errf("workloadSelector", "workloadSelector and endpoints are mutually exclusive")
		}
		if len(se.WorkloadSelector.Labels) == 0 {
			v.errf("workloadSelector.labels", "must not be empty when workloadSelector is set")
		}
		v.labels("workloadSelector.labels", se.WorkloadSelector.Labels)
	}
	switch se.Resolution {
	case networking.ServiceEntry_NONE:
		if len(se.Endpoints) > 0 {
			v.errf("endpoints", "resolution NONE sends traffic to the original destination: endpoints are not used")
		}
	case networking.ServiceEntry_STATIC:
		if len(se.Endpoints) == 0 && se.WorkloadSelector == nil {
			v.errf("endpoints", "resolution STATIC needs endpoints or a workloadSelector")
		}
	case networking.ServiceEntry_DNS, networking.ServiceEntry_DNS_ROUND_ROBIN, networking.ServiceEntry_DYNAMIC_DNS:
		if len(se.Endpoints) == 0 && wildcard && se.Resolution != networking.ServiceEntry_DYNAMIC_DNS {
			v.errf("hosts", "resolution %s without endpoints resolves the hosts themselves: wildcard hosts cannot be resolved", se.Resolution)
		}
		if se.Resolution == networking.ServiceEntry_DNS_ROUND_ROBIN && len(se.Endpoints) > 1 {
			v.errf("endpoints", "resolution DNS_ROUND_ROBIN allows at most one endpoint, got %d", len(se.Endpoints))
		}
	}
	for i, ep := range se.Endpoints {
		v.workloadEntry(idx("endpoints", i), ep, portNames, se.Resolution != networking.ServiceEntry_STATIC)
	}
}

// workloadEntry checks a WorkloadEntry spec or a ServiceEntry endpoint. portNames, when set, are the ServiceEntry
// port names that endpoint ports must refer to. hostnames says whether the address may be a DNS name.
func (v *validator) workloadEntry(path string, we *networking.WorkloadEntry, portNames map[string]bool, hostnames bool) {
	ap := join(path, "address")
	switch {
	case we.Address == "":
		v.errf(ap, "is required")
	case strings.HasPrefix(we.Address, "unix://"):
		if len(we.Address) == len("unix://") {
			v.errf(ap, "unix:// address needs a path")
		}
	default:
		if _, err := netip.ParseAddr(we.Address); err != nil {
			if !hostnames {
				v.errf(ap, "%q is not an IP address (or unix:// path), as resolution STATIC requires", we.Address)
			} else if !isDNSName(we.Address) {
				v.errf(ap, "%q is not an IP address or DNS name", we.Address)
			}
		}
	}
	for _, name := range sortedStrings(we.Ports) {
		pp := key(join(path, "ports"), name)
		v.port(pp, we.Ports[name])
		if portNames != nil && !portNames[name] {
			v.errf(pp, "port %q is not a port name of the ServiceEntry", name)
		}
	}
	v.labels(join(path, "labels"), we.Labels)
	if we.ServiceAccount != "" && !isDNSName(we.ServiceAccount) {
		v.errf(join(path, "serviceAccount"), "%q is not a valid service account name", we.ServiceAccount)
	}
}

func sortedStrings[V any](m map[string]V) []string { return model.SortedKeys(m) }

func (v *validator) sidecar(s *networking.Sidecar) {
	if len(s.Egress) == 0 && len(s.Ingress) == 0 && s.OutboundTrafficPolicy == nil && s.InboundConnectionPool == nil {
		v.errf("", "empty Sidecar: set egress, ingress, outboundTrafficPolicy or inboundConnectionPool")
	}
	if ws := s.WorkloadSelector; ws != nil {
		if len(ws.Labels) == 0 {
			v.errf("workloadSelector.labels", "must not be empty when workloadSelector is set")
		}
		v.labels("workloadSelector.labels", ws.Labels)
	}
	catchAll := -1
	for i, eg := range s.Egress {
		p := idx("egress", i)
		if eg.Port == nil {
			if catchAll >= 0 {
				v.errf(p, "only one egress listener may omit the port; egress[%d] already does", catchAll)
			}
			catchAll = i
		} else {
			v.sidecarPort(join(p, "port"), eg.Port)
			if catchAll >= 0 {
				v.errf(idx("egress", catchAll), "the egress listener without port must be the last one")
				catchAll = len(s.Egress) // report once
			}
		}
		if len(eg.Hosts) == 0 {
			v.errf(join(p, "hosts"), "at least one host is required")
		}
		for j, h := range eg.Hosts {
			v.namespacedHost(idx(join(p, "hosts"), j), h, true)
		}
		v.bind(join(p, "bind"), eg.Bind)
	}
	ports := map[uint32]int{}
	for i, in := range s.Ingress {
		p := idx("ingress", i)
		if in.Port == nil {
			v.errf(join(p, "port"), "is required")
		} else {
			v.sidecarPort(join(p, "port"), in.Port)
			if first, dup := ports[in.Port.Number]; dup {
				v.errf(join(p, "port.number"), "port %d is already used by ingress[%d]", in.Port.Number, first)
			} else {
				ports[in.Port.Number] = i
			}
		}
		v.bind(join(p, "bind"), in.Bind)
		if in.DefaultEndpoint != "" {
			v.defaultEndpoint(join(p, "defaultEndpoint"), in.DefaultEndpoint)
		}
		v.connectionPool(join(p, "connectionPool"), in.ConnectionPool)
	}
	v.connectionPool("inboundConnectionPool", s.InboundConnectionPool)
}

func (v *validator) sidecarPort(path string, p *networking.SidecarPort) {
	v.port(join(path, "number"), p.Number)
	v.protocol(join(path, "protocol"), p.Protocol)
}

func (v *validator) bind(path, b string) {
	if b == "" || strings.HasPrefix(b, "unix://") {
		return
	}
	if _, err := netip.ParseAddr(b); err != nil {
		v.errf(path, "%q is not an IP address or unix:// path", b)
	}
}

// defaultEndpoint checks the forwarding target of an ingress listener: 127.0.0.1:PORT, 0.0.0.0:PORT, their IPv6
// forms, or a unix:// socket.
func (v *validator) defaultEndpoint(path, ep string) {
	if strings.HasPrefix(ep, "unix://") {
		return
	}
	ap, err := netip.ParseAddrPort(ep)
	if err != nil {
		v.errf(path, "%q is not of the form 127.0.0.1:PORT, 0.0.0.0:PORT or unix://path", ep)
		return
	}
	if !ap.Addr().IsLoopback() && !ap.Addr().IsUnspecified() {
		v.errf(path, "%q: only loopback and unspecified addresses are allowed", ep)
	}
	v.port(path, uint32(ap.Port()))
}

// portString checks a port written as a string (AuthorizationPolicy operations).
func (v *validator) portString(path, s string) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		v.errf(path, "%q is not a port number", s)
		return
	}
	v.port(path, uint32(n))
}
