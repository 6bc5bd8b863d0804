package bootstrap

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/pkg/ca"
	"github.com/meshd/meshd/pkg/ca/authn"
	"github.com/meshd/meshd/pkg/ca/rootcert"
	caserver "github.com/meshd/meshd/pkg/ca/server"
	"github.com/meshd/meshd/pkg/xds"
)

// secureServer is the mTLS port (15012): ADS and the CA's IstioCertificateService, behind istiod's own serving
// certificate signed by the CA. Clients authenticate with a mesh certificate or a Kubernetes token; an ADS
// stream may then only ask for its own identity's config.
type secureServer struct {
	ca      *ca.CA
	serving *ca.ServingCert
	grpc    *grpc.Server
	auth    authn.Authenticator
}

// podNamespace is where istiod runs: POD_NAMESPACE, else istio-system.
func podNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return "istio-system"
}

func (s *Server) newSecureServer(ctx context.Context, args *Args, trustDomain string, kube kubernetes.Interface) (*secureServer, error) {
	c, err := ca.New(ctx, ca.Options{
		TrustDomain:   trustDomain,
		Client:        kube,
		Namespace:     podNamespace(),
		CACertsDir:    args.CACertsDir,
		SelfSignedDir: args.CASelfSignedDir,
		Logger:        s.log,
	})
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	names := ca.DefaultServingDNSNames("istiod", podNamespace(), args.Domain)
	if extra := os.Getenv("ISTIOD_CUSTOM_HOST"); extra != "" {
		names = append(names, strings.Split(extra, ",")...)
	}
	serving, err := ca.NewServingCert(c, ca.ServingOptions{DNSNames: names, Logger: s.log})
	if err != nil {
		return nil, fmt.Errorf("istiod serving certificate: %w", err)
	}
	chain := authn.Chain{authn.NewClientCert(c.Roots)}
	if kube != nil {
		jwt, err := authn.NewKubeJWT(authn.KubeJWTOptions{Client: kube, TrustDomain: trustDomain})
		if err != nil {
			return nil, err
		}
		chain = append(chain, jwt)
	}
	ss := &secureServer{ca: c, serving: serving, auth: chain}
	ss.grpc = grpc.NewServer(append(s.grpcOptions(args),
		grpc.Creds(credentials.NewTLS(ca.ServerTLSConfig(c, serving))),
		grpc.StreamInterceptor(ss.authenticateADS))...)
	s.XDS.Register(ss.grpc)
	caSrv, err := caserver.New(c, chain, caserver.Options{Logger: s.log})
	if err != nil {
		return nil, err
	}
	caSrv.Register(ss.grpc)
	return ss, nil
}

// authenticateADS authenticates ADS streams on the secure port and hands the caller to the xDS server, which
// refuses config requests for any other identity. The CA service authenticates its own calls.
func (ss *secureServer) authenticateADS(srv any, st grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !strings.HasPrefix(info.FullMethod, "/envoy.service.discovery.v3.AggregatedDiscoveryService/") {
		return handler(srv, st)
	}
	caller, err := ss.auth.Authenticate(st.Context())
	if err != nil {
		return status.Error(codes.Unauthenticated, "xDS on the secure port needs a mesh certificate or a service account token: "+err.Error())
	}
	_, ns, sa, err := authn.ParseSPIFFEID(caller.Identity)
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	ctx := xds.WithCaller(st.Context(), xds.Caller{Namespace: ns, ServiceAccount: sa, Identity: caller.Identity})
	return handler(srv, &contextStream{ServerStream: st, ctx: ctx})
}

type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *contextStream) Context() context.Context { return c.ctx }

// distributeRoot keeps the root certificate where workloads read it: ConfigMaps istio-ca-root-cert in every
// selected namespace (by the elected leader), or a file next to the self-signed root in file mode.
func (s *Server) distributeRoot(ss *secureServer, kube kubernetes.Interface, filter rootcert.NamespaceFilter, args *Args) error {
	if kube == nil {
		if args.CASelfSignedDir == "" {
			return nil
		}
		return rootcert.WriteFile(args.CASelfSignedDir+"/root-cert.pem", ss.ca.RootPEM())
	}
	ctrl, err := rootcert.New(kube, ss.ca.RootPEM, rootcert.Options{Filter: filter, Logger: s.log})
	if err != nil {
		return err
	}
	s.elector.AddRunFunction(ctrl.Run)
	return nil
}

func (ss *secureServer) serve(s *Server, ctx context.Context, lis net.Listener) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ss.serving.Run(ctx)
	}()
	s.serve("secure-grpc", func() error { return ss.grpc.Serve(lis) })
}
