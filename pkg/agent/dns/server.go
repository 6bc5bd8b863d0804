// Package dns is the agent's DNS proxy, Istio's "DNS capture": iptables sends the pod's port-53 traffic here, mesh
// hostnames (Kubernetes services, ServiceEntries the cluster DNS has never heard of) are answered from the name
// table the control plane pushes over NDS, and every other question goes to the pod's real resolvers.
package dns

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/meshd/meshd/pkg/dns/nds"
)

// Defaults of Options.
const (
	DefaultAddr            = "127.0.0.1:15053"
	DefaultResolvConf      = "/etc/resolv.conf"
	DefaultUpstreamTimeout = 5 * time.Second
)

// Options configure a Server.
type Options struct {
	// Addr is where to listen, UDP and TCP on the same port. Default DefaultAddr.
	Addr string
	// Upstreams are the resolvers ("ip:port") for names outside the mesh, tried in order. Default: the
	// nameservers of ResolvConf.
	Upstreams []string
	// ResolvConf is read when Upstreams or SearchDomains are not given. Default DefaultResolvConf.
	ResolvConf string
	// SearchDomains is the pod's search path (ns.svc.cluster.local, svc.cluster.local, cluster.local), to
	// recognise a mesh name with a search domain appended. The first one of the form NS.svc.DOMAIN also gives the
	// pod's namespace. Default: the search line of ResolvConf when it is read.
	SearchDomains []string
	// UpstreamTimeout bounds one exchange with one upstream over one transport. Default DefaultUpstreamTimeout.
	UpstreamTimeout time.Duration
	Logger          *slog.Logger
}

// Server answers DNS over UDP and TCP. Its handler is safe for concurrent use; the name table is swapped
// atomically.
type Server struct {
	opts      Options
	log       *slog.Logger
	upstreams []string
	search    []string // lower case, fully qualified
	proxyNS   string
	udpClient *miekg.Client
	tcpClient *miekg.Client

	state atomic.Pointer[tableState]

	mu      sync.Mutex
	started bool
	closed  bool
	servers []*miekg.Server
	udpAddr net.Addr
}

type tableState struct {
	table *nds.NameTable
	index *lookupIndex
}

// New validates opts and resolves the upstreams; it does not listen (see Start).
func New(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.ResolvConf == "" {
		opts.ResolvConf = DefaultResolvConf
	}
	if opts.UpstreamTimeout <= 0 {
		opts.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{
		opts: opts,
		log:  opts.Logger.With("component", "dns"),
		// UDPSize 0: the client sizes its buffer from the forwarded query's EDNS0 option, as the upstream does.
		udpClient: &miekg.Client{Net: "udp", Timeout: opts.UpstreamTimeout},
		tcpClient: &miekg.Client{Net: "tcp", Timeout: opts.UpstreamTimeout},
	}
	upstreams, search := opts.Upstreams, opts.SearchDomains
	if len(upstreams) == 0 || search == nil {
		cfg, err := miekg.ClientConfigFromFile(opts.ResolvConf)
		switch {
		case err == nil:
			if len(upstreams) == 0 {
				for _, ns := range cfg.Servers {
					upstreams = append(upstreams, net.JoinHostPort(ns, cfg.Port))
				}
			}
			if search == nil {
				search = cfg.Search
			}
		case len(upstreams) == 0:
			return nil, fmt.Errorf("dns proxy: no upstreams given and reading %s failed: %w", opts.ResolvConf, err)
		}
	}
	for _, u := range upstreams {
		if _, _, err := net.SplitHostPort(u); err != nil {
			return nil, fmt.Errorf("dns proxy: upstream %q: want ip:port: %w", u, err)
		}
		if u == opts.Addr {
			// Forwarding to ourselves would loop until the timeout.
			s.log.Warn("ignoring upstream that is the proxy itself", "upstream", u)
			continue
		}
		s.upstreams = append(s.upstreams, u)
	}
	if len(s.upstreams) == 0 {
		return nil, errors.New("dns proxy: no upstream resolvers")
	}
	for _, d := range search {
		if d = strings.Trim(strings.ToLower(d), "."); d != "" {
			s.search = append(s.search, d+".")
		}
	}
	s.proxyNS = namespaceFromSearch(s.search)
	s.state.Store(&tableState{table: &nds.NameTable{}, index: newLookupIndex(nil, s.search, s.proxyNS)})
	return s, nil
}

// namespaceFromSearch returns NS from the first search domain NS.svc.DOMAIN, the one Kubernetes puts first.
func namespaceFromSearch(search []string) string {
	for _, d := range search {
		if ns, rest, ok := strings.Cut(d, "."); ok && strings.HasPrefix(rest, "svc.") && ns != "" {
			return ns
		}
	}
	return ""
}

// Start listens on UDP and TCP and serves in the background until Close.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("dns proxy: start after close")
	}
	if s.started {
		return errors.New("dns proxy: already started")
	}
	pc, ln, err := listen(s.opts.Addr)
	if err != nil {
		return err
	}
	udp := &miekg.Server{PacketConn: pc, Handler: s}
	tcp := &miekg.Server{Listener: ln, Handler: s}
	for _, srv := range []*miekg.Server{udp, tcp} {
		if err := serve(srv); err != nil {
			for _, started := range s.servers {
				_ = started.Shutdown()
			}
			_ = pc.Close()
			_ = ln.Close()
			return fmt.Errorf("dns proxy: serve on %s: %w", s.opts.Addr, err)
		}
		s.servers = append(s.servers, srv)
	}
	s.started = true
	s.udpAddr = pc.LocalAddr()
	s.log.Info("dns proxy listening", "addr", pc.LocalAddr().String(), "upstreams", s.upstreams, "search", s.search)
	return nil
}

// serve runs srv in the background and returns once it accepts queries, or with the error that stopped it.
func serve(srv *miekg.Server) error {
	ready := make(chan struct{})
	failed := make(chan error, 1)
	srv.NotifyStartedFunc = func() { close(ready) }
	go func() { failed <- srv.ActivateAndServe() }()
	select {
	case <-ready:
		return nil
	case err := <-failed:
		return err
	}
}

// listen binds UDP and TCP on one port. With port 0 the kernel picks the UDP port, which may be taken for TCP:
// then it tries again.
func listen(addr string) (net.PacketConn, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns proxy: address %q: %w", addr, err)
	}
	for attempt := 0; ; attempt++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns proxy: listen udp %s: %w", addr, err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		_ = pc.Close()
		if port != "0" || attempt == 10 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("dns proxy: listen tcp %s: %w", pc.LocalAddr(), err)
		}
	}
}

// Addr is the UDP address the server listens on (TCP uses the same port); nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.udpAddr
}

// Close stops both listeners and waits for queries in progress.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var errs []error
	for _, srv := range s.servers {
		if err := srv.Shutdown(); err != nil {
			errs = append(errs, err)
		}
	}
	s.servers = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dns proxy: close: %w", err)
	}
	return nil
}

// UpdateTable makes t the name table. The lookup index is built here, once, so queries never wait for it. t must
// not be modified afterwards.
func (s *Server) UpdateTable(t *nds.NameTable) {
	if t == nil {
		t = &nds.NameTable{}
	}
	s.state.Store(&tableState{table: t, index: newLookupIndex(t, s.search, s.proxyNS)})
}

// Table returns the current name table, for debug output. Callers must not modify it.
func (s *Server) Table() *nds.NameTable { return s.state.Load().table }

// ServeDNS answers one query: mesh names from the table, anything else from the upstreams.
func (s *Server) ServeDNS(w miekg.ResponseWriter, req *miekg.Msg) {
	defer func() {
		// A bug answering one packet must not take DNS away from the whole pod.
		if r := recover(); r != nil {
			s.log.Error("dns query handler panicked", "panic", r)
			_ = w.WriteMsg(reply(req, miekg.RcodeServerFailure))
		}
	}()
	udp := w.LocalAddr().Network() == "udp"
	resp := s.resolve(req, udp)
	if udp {
		// Whatever we answer must fit the client's buffer; a truncated reply makes it retry over TCP.
		size := miekg.MinMsgSize
		if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
		resp.Truncate(size)
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("writing dns response failed", "client", w.RemoteAddr().String(), "error", err)
	}
}

func (s *Server) resolve(req *miekg.Msg, udp bool) *miekg.Msg {
	// The server's accept function already refuses these; checked again because the handler relies on them.
	if req.Opcode != miekg.OpcodeQuery {
		return reply(req, miekg.RcodeNotImplemented)
	}
	if len(req.Question) != 1 {
		return reply(req, miekg.RcodeFormatError)
	}
	q := req.Question[0]
	if q.Qclass == miekg.ClassINET {
		a, res := s.state.Load().index.lookup(strings.ToLower(q.Name))
		switch res {
		case meshHost:
			return answer(req, a)
		case meshExpand:
			resp := reply(req, miekg.RcodeNameError)
			resp.Authoritative = true
			return resp
		}
	}
	return s.forward(req, udp)
}

// forward asks the upstreams in order and returns the first answer as it is; SERVFAIL when none answers.
// UDP questions go out over UDP and retry over TCP when the answer was truncated; TCP questions go over TCP.
func (s *Server) forward(req *miekg.Msg, udp bool) *miekg.Msg {
	q := req.Copy()
	// A fresh id: the client's is not ours to reuse upstream, and a random one resists spoofed answers.
	q.Id = miekg.Id()
	for _, up := range s.upstreams {
		resp, err := s.exchange(q, up, udp)
		if err != nil {
			s.log.Debug("upstream dns query failed", "upstream", up, "name", req.Question[0].Name, "error", err)
			continue
		}
		resp.Id = req.Id
		return resp
	}
	s.log.Warn("no upstream answered", "name", req.Question[0].Name, "upstreams", s.upstreams)
	return reply(req, miekg.RcodeServerFailure)
}

func (s *Server) exchange(q *miekg.Msg, upstream string, udp bool) (*miekg.Msg, error) {
	if udp {
		resp, _, err := s.udpClient.Exchange(q, upstream)
		if err != nil {
			return nil, fmt.Errorf("udp: %w", err)
		}
		if !resp.Truncated {
			return resp, nil
		}
	}
	resp, _, err := s.tcpClient.Exchange(q, upstream)
	if err != nil {
		return nil, fmt.Errorf("tcp: %w", err)
	}
	return resp, nil
}

func reply(req *miekg.Msg, rcode int) *miekg.Msg {
	resp := new(miekg.Msg)
	resp.SetRcode(req, rcode)
	return resp
}
