package dns

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/meshd/meshd/pkg/dns/nds"
)

var search = []string{"default.svc.cluster.local", "svc.cluster.local", "cluster.local"}

// upstream stands in for the cluster DNS: it knows example.org and big.example.org (too big for UDP, so it
// answers truncated there, as real servers do), and records the transport of every question it gets.
type upstream struct {
	addr string
	mu   sync.Mutex
	seen []string // "udp example.org."
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	pc, ln, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	h := miekg.HandlerFunc(func(w miekg.ResponseWriter, r *miekg.Msg) {
		network := w.LocalAddr().Network()
		q := r.Question[0]
		u.mu.Lock()
		u.seen = append(u.seen, network+" "+q.Name)
		u.mu.Unlock()
		resp := new(miekg.Msg)
		resp.SetReply(r)
		switch {
		case q.Name == "example.org." && q.Qtype == miekg.TypeA:
			resp.Answer = append(resp.Answer, &miekg.A{
				Hdr: miekg.RR_Header{Name: q.Name, Rrtype: miekg.TypeA, Class: miekg.ClassINET, Ttl: 60},
				A:   net.ParseIP("93.184.216.34")})
		case q.Name == "big.example.org." && q.Qtype == miekg.TypeTXT:
			for range 30 {
				resp.Answer = append(resp.Answer, &miekg.TXT{
					Hdr: miekg.RR_Header{Name: q.Name, Rrtype: miekg.TypeTXT, Class: miekg.ClassINET, Ttl: 60},
					Txt: []string{strings.Repeat("x", 100)}})
			}
			if network == "udp" {
				resp.Answer, resp.Truncated = nil, true
			}
		default:
			resp.Rcode = miekg.RcodeNameError
		}
		_ = w.WriteMsg(resp)
	})
	for _, srv := range []*miekg.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		if err := serve(srv); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return u
}

func (u *upstream) queries() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.seen)
}

// deadAddr returns a loopback address nothing listens on, over UDP or TCP.
func deadAddr(t *testing.T) string {
	t.Helper()
	pc, ln, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	_ = pc.Close()
	_ = ln.Close()
	return addr
}

func meshTable() *nds.NameTable {
	return &nds.NameTable{Table: map[string]*nds.NameInfo{
		"reviews.default.svc.cluster.local": {IPs: []string{"10.96.0.13"}, Registry: nds.RegistryKubernetes,
			Shortname: "reviews", Namespace: "default", AltHosts: []string{"reviews", "reviews.default", "reviews.default.svc"}},
		"dual.default.svc.cluster.local": {IPs: []string{"10.96.0.20", "fd00::20"}, Registry: nds.RegistryKubernetes},
		// As istiod sends it: shortname and namespace, no alt_hosts.
		"ratings.other.svc.cluster.local": {IPs: []string{"10.96.1.1"}, Registry: nds.RegistryKubernetes,
			Shortname: "ratings", Namespace: "other"},
		"api.example.com": {IPs: []string{"240.240.0.1"}, Registry: nds.RegistryExternal},
		"*.wild.example":  {IPs: []string{"240.240.0.9"}, Registry: nds.RegistryExternal},
	}}
}

func startProxy(t *testing.T, opts Options) *Server {
	t.Helper()
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.SearchDomains == nil {
		opts.SearchDomains = search
	}
	if opts.UpstreamTimeout == 0 {
		opts.UpstreamTimeout = 2 * time.Second
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func query(t *testing.T, s *Server, network, name string, qtype uint16) *miekg.Msg {
	t.Helper()
	c := &miekg.Client{Net: network, Timeout: 10 * time.Second}
	m := new(miekg.Msg)
	m.SetQuestion(name, qtype)
	r, _, err := c.Exchange(m, s.Addr().String())
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, miekg.TypeToString[qtype], network, err)
	}
	return r
}

// addrs returns the A/AAAA addresses of a response.
func addrs(r *miekg.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *miekg.A:
			out = append(out, rr.A.String())
		case *miekg.AAAA:
			out = append(out, rr.AAAA.String())
		}
	}
	return out
}

func expect(t *testing.T, r *miekg.Msg, rcode int, want ...string) {
	t.Helper()
	if r.Rcode != rcode {
		t.Fatalf("%s: rcode %s, want %s", r.Question[0].Name, miekg.RcodeToString[r.Rcode], miekg.RcodeToString[rcode])
	}
	if got := addrs(r); !slices.Equal(got, want) {
		t.Fatalf("%s: addresses %v, want %v", r.Question[0].Name, got, want)
	}
}

func TestMeshNamesFromTable(t *testing.T) {
	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{up.addr}})
	s.UpdateTable(meshTable())

	r := query(t, s, "udp", "reviews.default.svc.cluster.local.", miekg.TypeA)
	expect(t, r, miekg.RcodeSuccess, "10.96.0.13")
	if !r.Authoritative || r.Answer[0].Header().Ttl != ttl {
		t.Errorf("want an authoritative answer with TTL %d, got %v", ttl, r)
	}
	expect(t, query(t, s, "udp", "ReViEwS.Default.SVC.cluster.local.", miekg.TypeA), miekg.RcodeSuccess, "10.96.0.13")
	expect(t, query(t, s, "udp", "api.example.com.", miekg.TypeA), miekg.RcodeSuccess, "240.240.0.1")
	expect(t, query(t, s, "udp", "a.b.wild.example.", miekg.TypeA), miekg.RcodeSuccess, "240.240.0.9")
	expect(t, query(t, s, "udp", "dual.default.svc.cluster.local.", miekg.TypeAAAA), miekg.RcodeSuccess, "fd00::20")
	// NODATA: the name exists, it has no address of that family (or no record of that type).
	nodata := query(t, s, "udp", "reviews.default.svc.cluster.local.", miekg.TypeAAAA)
	expect(t, nodata, miekg.RcodeSuccess)
	if !nodata.Authoritative {
		t.Error("NODATA for a mesh name must be authoritative")
	}
	expect(t, query(t, s, "udp", "reviews.default.svc.cluster.local.", miekg.TypeMX), miekg.RcodeSuccess)

	if q := up.queries(); len(q) != 0 {
		t.Fatalf("mesh names were forwarded: %v", q)
	}
}

func TestAltHosts(t *testing.T) {
	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{up.addr}})
	s.UpdateTable(meshTable())
	for _, name := range []string{"reviews.", "reviews.default.", "reviews.default.svc.", "REVIEWS.default."} {
		expect(t, query(t, s, "udp", name, miekg.TypeA), miekg.RcodeSuccess, "10.96.0.13")
	}
	// Derived from shortname and namespace when the table has no alt_hosts (istiod's form); the bare name only
	// in the pod's own namespace.
	for _, name := range []string{"ratings.other.", "ratings.other.svc."} {
		expect(t, query(t, s, "udp", name, miekg.TypeA), miekg.RcodeSuccess, "10.96.1.1")
	}
	expect(t, query(t, s, "udp", "ratings.", miekg.TypeA), miekg.RcodeNameError)
	if q := up.queries(); !slices.Equal(q, []string{"udp ratings."}) {
		t.Fatalf("upstream saw %v, want only the bare name of another namespace's service", q)
	}
}

// TestSearchExpansionIsNXDOMAIN: what a stub resolver with ndots:5 asks first for a mesh name is answered at
// once, without a round trip to the upstream.
func TestSearchExpansionIsNXDOMAIN(t *testing.T) {
	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{up.addr}})
	s.UpdateTable(meshTable())
	for _, name := range []string{
		"reviews.default.svc.cluster.local.default.svc.cluster.local.",
		"reviews.default.svc.cluster.local.svc.cluster.local.",
		"reviews.default.default.svc.cluster.local.",
		"api.example.com.cluster.local.",
	} {
		r := query(t, s, "udp", name, miekg.TypeA)
		expect(t, r, miekg.RcodeNameError)
		if !r.Authoritative {
			t.Errorf("%s: NXDOMAIN must be authoritative", name)
		}
	}
	if q := up.queries(); len(q) != 0 {
		t.Fatalf("expanded mesh names were forwarded: %v", q)
	}
}

func TestForwardsOtherNames(t *testing.T) {
	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{up.addr}})
	s.UpdateTable(meshTable())
	r := query(t, s, "udp", "example.org.", miekg.TypeA)
	expect(t, r, miekg.RcodeSuccess, "93.184.216.34")
	if r.Authoritative {
		t.Error("a forwarded answer must not claim authority it was not given")
	}
	// In the cluster domain but not in the table: the cluster DNS decides.
	expect(t, query(t, s, "udp", "unknown.default.svc.cluster.local.", miekg.TypeA), miekg.RcodeNameError)
	want := []string{"udp example.org.", "udp unknown.default.svc.cluster.local."}
	if q := up.queries(); !slices.Equal(q, want) {
		t.Fatalf("upstream saw %v, want %v", q, want)
	}
}

func TestTCPQueries(t *testing.T) {
	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{up.addr}})
	s.UpdateTable(meshTable())
	expect(t, query(t, s, "tcp", "reviews.default.svc.cluster.local.", miekg.TypeA), miekg.RcodeSuccess, "10.96.0.13")
	expect(t, query(t, s, "tcp", "example.org.", miekg.TypeA), miekg.RcodeSuccess, "93.184.216.34")
	if q := up.queries(); !slices.Equal(q, []string{"tcp example.org."}) {
		t.Fatalf("upstream saw %v, want one TCP question", q)
	}
}

func TestTruncatedUpstreamRetriesOverTCP(t *testing.T) {
	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{up.addr}})
	c := &miekg.Client{Net: "udp", Timeout: 10 * time.Second}
	m := new(miekg.Msg)
	m.SetQuestion("big.example.org.", miekg.TypeTXT)
	m.SetEdns0(miekg.DefaultMsgSize, false)
	r, _, err := c.Exchange(m, s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 30 {
		t.Fatalf("want the full answer (30 TXT, not truncated), got %d records, truncated=%v", len(r.Answer), r.Truncated)
	}
	want := []string{"udp big.example.org.", "tcp big.example.org."}
	if q := up.queries(); !slices.Equal(q, want) {
		t.Fatalf("upstream saw %v, want %v", q, want)
	}

	// A client without EDNS0 gets what fits in 512 bytes, flagged truncated so it retries over TCP.
	m = new(miekg.Msg)
	m.SetQuestion("big.example.org.", miekg.TypeTXT)
	r, _, err = c.Exchange(m, s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r.Compress = true // size it as sent: Truncate counts compressed names
	if !r.Truncated || r.Len() > miekg.MinMsgSize {
		t.Fatalf("want a truncated answer of at most 512 bytes, got %d bytes, truncated=%v", r.Len(), r.Truncated)
	}
}

func TestUpstreamDownIsSERVFAIL(t *testing.T) {
	s := startProxy(t, Options{Upstreams: []string{deadAddr(t)}, UpstreamTimeout: 500 * time.Millisecond})
	s.UpdateTable(meshTable())
	expect(t, query(t, s, "udp", "example.org.", miekg.TypeA), miekg.RcodeServerFailure)
	expect(t, query(t, s, "tcp", "example.org.", miekg.TypeA), miekg.RcodeServerFailure)
	// Mesh names do not need the upstream.
	expect(t, query(t, s, "udp", "reviews.", miekg.TypeA), miekg.RcodeSuccess, "10.96.0.13")
}

func TestNextUpstreamWhenFirstIsDown(t *testing.T) {
	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{deadAddr(t), up.addr}, UpstreamTimeout: 500 * time.Millisecond})
	expect(t, query(t, s, "udp", "example.org.", miekg.TypeA), miekg.RcodeSuccess, "93.184.216.34")
}

func TestUpdateTableSwapsAnswers(t *testing.T) {
	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{up.addr}})
	s.UpdateTable(meshTable())
	expect(t, query(t, s, "udp", "reviews.", miekg.TypeA), miekg.RcodeSuccess, "10.96.0.13")

	next := &nds.NameTable{Table: map[string]*nds.NameInfo{
		"details.default.svc.cluster.local": {IPs: []string{"10.96.0.11"}, Registry: nds.RegistryKubernetes,
			Shortname: "details", Namespace: "default"},
	}}
	s.UpdateTable(next)
	if s.Table() != next {
		t.Fatal("Table does not return the applied table")
	}
	expect(t, query(t, s, "udp", "details.", miekg.TypeA), miekg.RcodeSuccess, "10.96.0.11")
	// Gone from the table, so the upstream is asked (and does not know it).
	expect(t, query(t, s, "udp", "reviews.default.svc.cluster.local.", miekg.TypeA), miekg.RcodeNameError)
	if q := up.queries(); !slices.Equal(q, []string{"udp reviews.default.svc.cluster.local."}) {
		t.Fatalf("upstream saw %v", q)
	}
}

func TestMalformedPacketsDoNotStopTheServer(t *testing.T) {
	up := startUpstream(t)
	s := startProxy(t, Options{Upstreams: []string{up.addr}})
	s.UpdateTable(meshTable())

	udp, err := net.Dial("udp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	valid := new(miekg.Msg)
	valid.SetQuestion("reviews.", miekg.TypeA)
	packed, err := valid.Pack()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][]byte{
		{0x01},                                   // shorter than a header
		packed[:14],                              // a header promising a question, then nothing
		append(packed[:12:12], 0xff, 0xff, 0xff), // a bad label
		[]byte(strings.Repeat("\xff", 600)),      // noise
	} {
		if _, err := udp.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	tcp, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = tcp.Write([]byte{0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00}) // length-prefixed garbage
	_ = tcp.Close()

	expect(t, query(t, s, "udp", "reviews.", miekg.TypeA), miekg.RcodeSuccess, "10.96.0.13")
	expect(t, query(t, s, "tcp", "reviews.", miekg.TypeA), miekg.RcodeSuccess, "10.96.0.13")
}

func TestNewReadsResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	conf := "nameserver 10.96.0.10\nnameserver 10.96.0.11\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{ResolvConf: path})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.96.0.10:53", "10.96.0.11:53"}; !slices.Equal(s.upstreams, want) {
		t.Errorf("upstreams %v, want %v", s.upstreams, want)
	}
	if want := []string{"default.svc.cluster.local.", "svc.cluster.local.", "cluster.local."}; !slices.Equal(s.search, want) {
		t.Errorf("search %v, want %v", s.search, want)
	}
	if s.proxyNS != "default" {
		t.Errorf("namespace %q, want default", s.proxyNS)
	}

	if _, err := New(Options{ResolvConf: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Error("New without upstreams and without resolv.conf succeeded")
	}
	if _, err := New(Options{Upstreams: []string{"10.0.0.1"}}); err == nil {
		t.Error("New accepted an upstream without port")
	}
}
