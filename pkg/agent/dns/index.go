package dns

import (
	"net"
	"net/netip"
	"slices"
	"strings"

	miekg "github.com/miekg/dns"

	"github.com/meshd/meshd/pkg/dns/nds"
)

// ttl is what answers from the name table carry, as in Istio: short enough that a VIP change is picked up soon,
// long enough to spare the proxy a query per connection.
const ttl = 30

// addresses are the answers for one name.
type addresses struct {
	v4, v6 []net.IP
}

// lookupIndex is a name table prepared for queries: every name a client may ask for, lower case, fully
// qualified. It is built once per table and never modified, so queries read it without locks.
type lookupIndex struct {
	hosts map[string]*addresses
	// wildcards holds "*.example.com" entries by their suffix "example.com.".
	wildcards map[string]*addresses
	// search are the pod's search domains ("default.svc.cluster.local."), for recognising expanded names.
	search []string
}

// newLookupIndex indexes t. Table hostnames win over alternative names, and among alternative names the one of
// the lexically first hostname wins, so a clash resolves the same way every time. proxyNS is the pod's
// namespace ("" when unknown), used to derive the bare service name of Kubernetes entries that come without
// alt_hosts (istiod sends only shortname and namespace and lets the agent derive them).
func newLookupIndex(t *nds.NameTable, search []string, proxyNS string) *lookupIndex {
	idx := &lookupIndex{hosts: map[string]*addresses{}, wildcards: map[string]*addresses{}, search: search}
	if t == nil {
		return idx
	}
	keys := make([]string, 0, len(t.Table))
	for k := range t.Table {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	byHost := make(map[string]*addresses, len(keys))
	for _, host := range keys {
		a := parseAddresses(t.Table[host].IPs)
		if a == nil {
			continue
		}
		byHost[host] = a
		name := fqdn(host)
		if suffix, ok := strings.CutPrefix(name, "*."); ok {
			idx.wildcards[suffix] = a
			continue
		}
		idx.hosts[name] = a
	}
	for _, host := range keys {
		a := byHost[host]
		if a == nil {
			continue
		}
		for _, alt := range altNames(t.Table[host], proxyNS) {
			if name := fqdn(alt); idx.hosts[name] == nil {
				idx.hosts[name] = a
			}
		}
	}
	return idx
}

func altNames(ni *nds.NameInfo, proxyNS string) []string {
	out := slices.Clone(ni.AltHosts)
	if ni.Registry == nds.RegistryKubernetes && ni.Shortname != "" && ni.Namespace != "" {
		nsForm := ni.Shortname + "." + ni.Namespace
		out = append(out, nsForm, nsForm+".svc")
		if ni.Namespace == proxyNS {
			out = append(out, ni.Shortname)
		}
	}
	return out
}

func parseAddresses(ips []string) *addresses {
	a := &addresses{}
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			continue // one bad address must not cost the host its good ones
		}
		if ip.Is4() || ip.Is4In6() {
			a.v4 = append(a.v4, net.IP(ip.Unmap().AsSlice()))
		} else {
			a.v6 = append(a.v6, net.IP(ip.AsSlice()))
		}
	}
	if len(a.v4) == 0 && len(a.v6) == 0 {
		return nil
	}
	return a
}

func fqdn(name string) string { return miekg.Fqdn(strings.ToLower(name)) }

// result is what the index says about a name.
type result int

const (
	notMesh    result = iota // forward it
	meshHost                 // answer from the table
	meshExpand               // a mesh name with a search domain appended: it cannot exist
)

// lookup finds the addresses of name (lower case, fully qualified). A stub resolver with ndots:5 tries
// "reviews.default.svc.cluster.local" first as "reviews.default.svc.cluster.local.default.svc.cluster.local.",
// then the other search domains, then as is. Such an expansion of a mesh name is answered NXDOMAIN here rather
// than forwarded: the upstream would say the same, later.
func (idx *lookupIndex) lookup(name string) (*addresses, result) {
	if a := idx.hosts[name]; a != nil {
		return a, meshHost
	}
	for rest := name; ; {
		_, after, ok := strings.Cut(rest, ".")
		if !ok || after == "" {
			break
		}
		if a := idx.wildcards[after]; a != nil {
			return a, meshHost
		}
		rest = after
	}
	for _, s := range idx.search {
		if prefix, ok := strings.CutSuffix(name, "."+s); ok && idx.hosts[prefix+"."] != nil {
			return nil, meshExpand
		}
	}
	return nil, notMesh
}

// answer builds the authoritative reply for a question about a mesh name: A and AAAA records for their
// families, and an empty answer (NODATA) for any other type or a family the name has no address of.
func answer(req *miekg.Msg, a *addresses) *miekg.Msg {
	q := req.Question[0]
	resp := new(miekg.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	hdr := miekg.RR_Header{Name: q.Name, Class: miekg.ClassINET, Ttl: ttl}
	switch q.Qtype {
	case miekg.TypeA:
		hdr.Rrtype = miekg.TypeA
		for _, ip := range a.v4 {
			resp.Answer = append(resp.Answer, &miekg.A{Hdr: hdr, A: ip})
		}
	case miekg.TypeAAAA:
		hdr.Rrtype = miekg.TypeAAAA
		for _, ip := range a.v6 {
			resp.Answer = append(resp.Answer, &miekg.AAAA{Hdr: hdr, AAAA: ip})
		}
	}
	return resp
}
