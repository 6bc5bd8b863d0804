// Package sds serves the workload's certificates to Envoy over its Secret Discovery Service on a Unix socket,
// as Istio's agent does: the secret "default" (certificate chain and private key) and "ROOTCA" (the mesh
// root). Both the state-of-the-world (StreamSecrets) and the incremental (DeltaSecrets) protocols are served;
// a renewed certificate is pushed on the open streams, so Envoy never has to ask again.
package sds

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"

	"github.com/meshd/meshd/pkg/agent/secrets"
)

// SecretType is the type URL of an SDS resource.
const SecretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// Modes of the socket and of the directories created for it: only the agent's user (Envoy runs as the same
// one in the istio-proxy container) may connect, since the private key is served to whoever does.
const (
	dirMode    = 0o750
	socketMode = 0o600
)

// Options configure a Server.
type Options struct {
	// Socket is the path of the Unix socket, ./var/run/secrets/workload-spiffe-uds/socket in Istio's layout.
	Socket  string
	Secrets *secrets.Manager
	Logger  *slog.Logger
}

// Server is the SDS server on a Unix socket.
type Server struct {
	socket  string
	log     *slog.Logger
	lis     net.Listener
	grpc    *grpc.Server
	started atomic.Bool
}

// New listens on opts.Socket, creating its directory (0750) and replacing a stale socket file left by a
// previous agent; a socket another live process serves is not taken over. Serve serves it.
func New(opts Options) (*Server, error) {
	if opts.Socket == "" {
		return nil, errors.New("SDS server: no socket path")
	}
	if opts.Secrets == nil {
		return nil, errors.New("SDS server: no secrets manager")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	log := opts.Logger.With("component", "sds", "socket", opts.Socket)
	if err := os.MkdirAll(filepath.Dir(opts.Socket), dirMode); err != nil {
		return nil, fmt.Errorf("SDS server: creating the socket directory: %w", err)
	}
	if err := removeStale(opts.Socket); err != nil {
		return nil, fmt.Errorf("SDS server: %w", err)
	}
	lis, err := net.Listen("unix", opts.Socket)
	if err != nil {
		return nil, fmt.Errorf("SDS server: listening: %w", err)
	}
	// The socket is created with the umask's mode; the 0750 directory keeps others out until this narrows it.
	if err := os.Chmod(opts.Socket, socketMode); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("SDS server: restricting the socket: %w", err)
	}
	g := grpc.NewServer()
	secretv3.RegisterSecretDiscoveryServiceServer(g, &service{secrets: opts.Secrets, log: log})
	return &Server{socket: opts.Socket, log: log, lis: lis, grpc: g}, nil
}

// removeStale removes a socket file nobody listens on any more.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking %s: %w", path, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory", path)
	}
	if fi.Mode().Type() == fs.ModeSocket {
		if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = conn.Close()
			return fmt.Errorf("%s is in use by another process", path)
		}
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing the stale %s: %w", path, err)
	}
	return nil
}

// Serve serves until ctx is done, then closes every stream and removes the socket. It may be called once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("SDS server: already served")
	}
	s.log.Info("SDS server listening")
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.lis) }()
	var err error
	select {
	case <-ctx.Done():
		// Stop, not GracefulStop: SDS streams last as long as Envoy, a graceful stop would wait for them.
		s.grpc.Stop()
		<-errc
	case err = <-errc:
		err = fmt.Errorf("SDS server on %s: %w", s.socket, err)
	}
	if rerr := os.Remove(s.socket); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("SDS server: removing the socket: %w", rerr))
	}
	s.log.Info("SDS server stopped")
	return err
}
