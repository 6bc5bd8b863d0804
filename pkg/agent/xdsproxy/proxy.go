// Package xdsproxy is the agent's xDS proxy: Envoy or a proxyless gRPC application connects to the agent over a
// Unix socket, and the agent forwards each ADS stream, unchanged, to the control plane over one shared
// connection that carries the agent's credentials. The workload never needs the mesh identity or the control
// plane's address, and the agent sees every ACK and NACK (readiness, debug).
package xdsproxy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"
)

// Socket and directory modes: only the agent's user (and the workload sharing it) may talk to the proxy,
// since whoever can connect gets config under the agent's identity.
const (
	socketMode    fs.FileMode = 0o600
	socketDirMode fs.FileMode = 0o750
)

// maxMsgSize lifts gRPC's 4 MiB default: a large mesh's CDS or EDS response easily exceeds it, and a
// transparent forwarder must relay whatever the control plane sends and the workload accepts.
const maxMsgSize = math.MaxInt32

// Options configures a Proxy.
type Options struct {
	// Socket is the Unix socket to serve ADS on. Parent directories are created (0750), a stale socket file
	// is removed and the socket is made owner-only (0600).
	Socket string
	// Upstream is the control plane's host:port.
	Upstream string
	// DialOptions carry the transport and per-RPC credentials chosen by the caller (TLS and a bearer token,
	// or insecure). They are applied after the proxy's defaults (backoff, keepalive, message size), so they
	// may override them.
	DialOptions []grpc.DialOption
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Proxy forwards ADS streams from a Unix socket to the control plane.
type Proxy struct {
	opts   Options
	log    *slog.Logger
	lis    net.Listener
	conn   *grpc.ClientConn
	server *grpc.Server
	stats  stats

	// pumps tracks the goroutines that read downstream requests; they outlive their handler briefly, so
	// shutdown waits for them to avoid leaking past Close.
	pumps sync.WaitGroup

	serveOnce sync.Once
	closeOnce sync.Once
	closeErr  error
}

// New listens on opts.Socket and prepares the upstream connection. The connection is lazy (grpc.NewClient):
// it is made when the first stream needs it and re-made, with exponential backoff, whenever it breaks.
func New(opts Options) (*Proxy, error) {
	if opts.Socket == "" {
		return nil, errors.New("xds proxy: no socket path")
	}
	if opts.Upstream == "" {
		return nil, errors.New("xds proxy: no upstream address")
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "xdsproxy")

	dialOpts := append([]grpc.DialOption{
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  500 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   30 * time.Second,
			},
			// WithConnectParams replaces gRPC's default with this value, zero included, so keep the default.
			MinConnectTimeout: 20 * time.Second,
		}),
		// Detects a silently dead control plane (e.g. a node that vanished) sooner than TCP would.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)),
	}, opts.DialOptions...)
	conn, err := grpc.NewClient(opts.Upstream, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("xds proxy: upstream %s: %w", opts.Upstream, err)
	}

	lis, err := listenUnix(opts.Socket)
	if err != nil {
		conn.Close()
		return nil, err
	}

	p := &Proxy{
		opts: opts,
		log:  log,
		lis:  lis,
		conn: conn,
	}
	p.stats.types = map[string]*TypeStats{}
	// WaitForHandlers makes Stop return only once every handler has returned, so Close can promise that
	// no stream is still running. The forced codec hands handlers raw frames: the server serves only ADS,
	// which the proxy relays without decoding.
	p.server = grpc.NewServer(grpc.MaxRecvMsgSize(maxMsgSize), grpc.WaitForHandlers(true),
		grpc.ForceServerCodecV2(rawCodec{}))
	p.server.RegisterService(adsServiceDesc(p), nil)
	return p, nil
}

// listenUnix binds path, replacing a stale socket left by a previous run (a crashed agent cannot unlink it)
// but refusing to delete anything that is not a socket.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), socketDirMode); err != nil {
		return nil, fmt.Errorf("xds proxy: socket directory: %w", err)
	}
	fi, err := os.Lstat(path)
	switch {
	case err == nil && fi.Mode()&fs.ModeSocket == 0:
		return nil, fmt.Errorf("xds proxy: %s exists and is not a socket", path)
	case err == nil:
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("xds proxy: removing stale socket: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("xds proxy: socket path: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("xds proxy: listen: %w", err)
	}
	// The socket is created with the umask's mode; the 0750 parent keeps others out until this narrows it.
	if err := os.Chmod(path, socketMode); err != nil {
		lis.Close()
		return nil, fmt.Errorf("xds proxy: socket mode: %w", err)
	}
	return lis, nil
}

// Serve serves ADS on the socket until ctx is done, then ends every stream, closes the upstream connection
// and removes the socket. It returns nil after ctx ends, or the error that stopped serving earlier.
func (p *Proxy) Serve(ctx context.Context) error {
	started := false
	p.serveOnce.Do(func() { started = true })
	if !started {
		return errors.New("xds proxy: Serve called twice")
	}
	p.log.Info("xDS proxy serving", "socket", p.opts.Socket, "upstream", p.opts.Upstream)
	errc := make(chan error, 1)
	go func() { errc <- p.server.Serve(p.lis) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		if err != nil {
			err = fmt.Errorf("xds proxy: serving %s: %w", p.opts.Socket, err)
		}
	}
	if cerr := p.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close stops serving (ending every stream), closes the upstream connection and removes the socket. Serve
// calls it; call it directly only when Serve is never run.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.server.Stop()
		// Stop closes only listeners handed to Serve; Serve may never have run.
		_ = p.lis.Close()
		p.pumps.Wait()
		var errs []error
		if err := p.conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("xds proxy: closing upstream connection: %w", err))
		}
		if err := os.Remove(p.opts.Socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("xds proxy: removing socket: %w", err))
		}
		p.closeErr = errors.Join(errs...)
		p.log.Info("xDS proxy stopped", "socket", p.opts.Socket)
	})
	return p.closeErr
}

// Conn is the shared upstream connection, for the agent's own streams (NDS, debug). It is closed by Close.
func (p *Proxy) Conn() *grpc.ClientConn { return p.conn }

// Acked reports whether some downstream has ACKed at least one response of typeURL: the workload has
// accepted config of that type (readiness).
func (p *Proxy) Acked(typeURL string) bool { return p.stats.acked(typeURL) }

// Status is a snapshot for debugging.
type Status struct {
	Upstream string `json:"upstream"`
	// State is the upstream connection's connectivity state (IDLE until a stream needs it).
	State         string `json:"state"`
	ActiveStreams int    `json:"activeStreams"`
	// Types counts, per type URL, what went through since the proxy started.
	Types map[string]TypeStats `json:"types"`
}

// TypeStats counts one type's traffic.
type TypeStats struct {
	Responses uint64 `json:"responses"`
	ACKs      uint64 `json:"acks"`
	NACKs     uint64 `json:"nacks"`
}

// Status returns the current Status.
func (p *Proxy) Status() Status {
	s := p.stats.snapshot()
	s.Upstream = p.opts.Upstream
	s.State = p.conn.GetState().String()
	return s
}
