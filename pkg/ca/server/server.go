// Package server is the CA's gRPC service, istio.v1.auth.IstioCertificateService: a workload sends a CSR and
// gets a certificate for the identity it authenticated as, and for nothing else.
package server

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshd/meshd/pkg/ca"
	"github.com/meshd/meshd/pkg/ca/authn"
)

// Istio's CA metrics.
var (
	csrCount = promauto.NewCounter(prometheus.CounterOpts{
		Name: "citadel_server_csr_count",
		Help: "The number of certificate signing requests received.",
	})
	successCount = promauto.NewCounter(prometheus.CounterOpts{
		Name: "citadel_server_success_cert_issuance_count",
		Help: "The number of certificates issued.",
	})
	authnFailureCount = promauto.NewCounter(prometheus.CounterOpts{
		Name: "citadel_server_authentication_failure_count",
		Help: "The number of certificate signing requests whose caller could not be authenticated.",
	})
	csrParseErrorCount = promauto.NewCounter(prometheus.CounterOpts{
		Name: "citadel_server_csr_parsing_err_count",
		Help: "The number of certificate signing requests that do not parse, are too large, or whose signature does not verify.",
	})
	csrSignErrorCount = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "citadel_server_csr_sign_err_count",
		Help: "The number of certificate signing requests refused or failed while signing, by error: ttl, impersonation, internal.",
	}, []string{"error"})
	rootExpiry = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "citadel_server_root_cert_expiry_timestamp",
		Help: "The unix time, in seconds, when the CA root expires.",
	})
)

// Signer signs for an authenticated identity; *ca.CA is one.
type Signer interface {
	Sign(csrPEM []byte, identity string, ttl time.Duration) ([]string, error)
	RootExpiry() time.Time
}

// Options configure a Server.
type Options struct {
	// MaxCSRBytes bounds the CSR of a request, ca.MaxCSRBytes (64 KiB) when zero.
	MaxCSRBytes int
	Logger      *slog.Logger
}

// Server implements istio.v1.auth.IstioCertificateService.
type Server struct {
	pb.UnimplementedIstioCertificateServiceServer
	signer Signer
	auth   authn.Authenticator
	max    int
	log    *slog.Logger
}

// New returns the CA service signing with signer for the callers auth authenticates (typically an
// authn.Chain of a client-certificate and a token authenticator).
func New(signer Signer, auth authn.Authenticator, opts Options) (*Server, error) {
	if signer == nil || auth == nil {
		return nil, errors.New("CA server: a signer and an authenticator are required")
	}
	if opts.MaxCSRBytes <= 0 {
		opts.MaxCSRBytes = ca.MaxCSRBytes
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{signer: signer, auth: auth, max: opts.MaxCSRBytes, log: opts.Logger.With("component", "ca-server")}
	s.updateRootExpiry()
	return s, nil
}

// Register adds the service to a gRPC server.
func (s *Server) Register(g *grpc.Server) { pb.RegisterIstioCertificateServiceServer(g, s) }

func (s *Server) updateRootExpiry() {
	rootExpiry.Set(float64(s.signer.RootExpiry().Unix()))
}

// impersonationKey is the request metadata field Istio's node agents (ztunnel) use to ask for another
// workload's certificate. meshd does not trust any caller to do that.
const impersonationKey = "ImpersonatedIdentity"

// CreateCertificate authenticates the caller, checks the CSR and signs it for the caller's identity. Failures
// are Unauthenticated (no or bad credentials), Unavailable (credentials could not be checked), InvalidArgument
// (bad CSR or validity), PermissionDenied (asking for another identity) or Internal; none carries a certificate.
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	csrCount.Inc()
	log := s.log
	if p, ok := peer.FromContext(ctx); ok {
		log = log.With("peer", p.Addr.String())
	}
	caller, err := s.auth.Authenticate(ctx)
	if err != nil {
		authnFailureCount.Inc()
		log.Warn("certificate request refused: authentication failed", "error", err)
		if errors.Is(err, authn.ErrUnavailable) {
			return nil, status.Errorf(codes.Unavailable, "authenticating the caller: %v", err)
		}
		return nil, status.Errorf(codes.Unauthenticated, "authentication failed: %v", err)
	}
	log = log.With("identity", caller.Identity, "method", caller.Method)

	if n := len(req.GetCsr()); n > s.max {
		csrParseErrorCount.Inc()
		log.Warn("certificate request refused: CSR too large", "bytes", n)
		return nil, status.Errorf(codes.InvalidArgument, "CSR is %d bytes, more than the %d allowed", n, s.max)
	}
	if v := req.GetMetadata().GetFields()[impersonationKey].GetStringValue(); v != "" && v != caller.Identity {
		csrSignErrorCount.WithLabelValues("impersonation").Inc()
		log.Warn("certificate request refused: impersonation asked", "impersonated", v)
		return nil, status.Errorf(codes.PermissionDenied, "%s is authenticated as %s and may not obtain a certificate for %s",
			caller.Method, caller.Identity, v)
	}
	if d := req.GetValidityDuration(); d < 0 || d > int64((1<<63-1)/time.Second) {
		csrSignErrorCount.WithLabelValues("ttl").Inc()
		log.Warn("certificate request refused: bad validity", "validitySeconds", d)
		return nil, status.Errorf(codes.InvalidArgument, "validity_duration %d seconds is out of range", d)
	}
	ttl := time.Duration(req.GetValidityDuration()) * time.Second
	chain, err := s.signer.Sign([]byte(req.GetCsr()), caller.Identity, ttl)
	switch {
	case err == nil:
	case errors.Is(err, ca.ErrInvalidCSR):
		csrParseErrorCount.Inc()
		log.Warn("certificate request refused: bad CSR", "error", err)
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	case errors.Is(err, ca.ErrInvalidTTL):
		csrSignErrorCount.WithLabelValues("ttl").Inc()
		log.Warn("certificate request refused: bad validity", "error", err)
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	default:
		csrSignErrorCount.WithLabelValues("internal").Inc()
		log.Error("signing a certificate failed", "error", err)
		return nil, status.Errorf(codes.Internal, "signing the certificate for %s failed: %v", caller.Identity, err)
	}
	successCount.Inc()
	s.updateRootExpiry()
	log.Debug("certificate issued", "ttl", ttl)
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}
