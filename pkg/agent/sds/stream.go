package sds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/pkg/agent/secrets"
)

// service implements SecretDiscoveryService; FetchSecrets stays Unimplemented (Envoy does not use it).
type service struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer
	secrets *secrets.Manager
	log     *slog.Logger
	streams atomic.Uint64
}

// resource is one secret ready to send.
type resource struct {
	name, version string
	any           *anypb.Any
}

// resolve gets the secrets names. Those that cannot be had are left out and their errors returned, for the
// caller to log when Envoy asked: an unknown name is Envoy's configuration error, not a reason to end the
// stream.
func (s *service) resolve(ctx context.Context, names []string) ([]resource, map[string]error) {
	out := make([]resource, 0, len(names))
	var failed map[string]error
	for _, name := range names {
		item, err := s.secrets.Get(ctx, name)
		var a *anypb.Any
		if err == nil {
			a, err = anypb.New(toSecret(item))
		}
		if err != nil {
			if failed == nil {
				failed = map[string]error{}
			}
			failed[name] = err
			continue
		}
		out = append(out, resource{name: name, version: item.Version, any: a})
	}
	return out, failed
}

// reportFailures logs why the secrets of names could not be served.
func reportFailures(ctx context.Context, log *slog.Logger, failed map[string]error, names []string) {
	if ctx.Err() != nil {
		return // the stream is gone; nobody waits for these
	}
	for _, name := range names {
		if err, ok := failed[name]; ok {
			log.Error("secret requested cannot be served", "name", name, "error", err)
		}
	}
}

func toSecret(item *secrets.Item) *tlsv3.Secret {
	inline := func(b []byte) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	if item.Name == secrets.RootCertName {
		return &tlsv3.Secret{Name: item.Name, Type: &tlsv3.Secret_ValidationContext{
			ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(item.RootPEM)},
		}}
	}
	return &tlsv3.Secret{Name: item.Name, Type: &tlsv3.Secret_TlsCertificate{
		TlsCertificate: &tlsv3.TlsCertificate{CertificateChain: inline(item.CertChainPEM), PrivateKey: inline(item.PrivateKeyPEM)},
	}}
}

// receive forwards the stream's requests to out until Recv fails, which it reports on errc (buffered).
func receive[T any](ctx context.Context, recv func() (T, error), out chan<- T, errc chan<- error) {
	for {
		req, err := recv()
		if err != nil {
			errc <- err
			return
		}
		select {
		case out <- req:
		case <-ctx.Done():
			return
		}
	}
}

// streamEnd turns the end of the request stream into the handler's result.
func streamEnd(log *slog.Logger, err error) error {
	if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
		log.Debug("SDS stream closed")
		return nil
	}
	log.Debug("SDS stream broken", "error", err)
	return err
}

// StreamSecrets is the state-of-the-world protocol: each request names every secret wanted; each response
// carries all of them. A new certificate is pushed when its version differs from the last one sent.
func (s *service) StreamSecrets(stream grpc.BidiStreamingServer[discoveryv3.DiscoveryRequest, discoveryv3.DiscoveryResponse]) error {
	ctx := stream.Context()
	id := s.streams.Add(1)
	log := s.log.With("stream", id, "protocol", "sotw")
	updates, unsubscribe := s.secrets.Subscribe()
	defer unsubscribe()
	reqs := make(chan *discoveryv3.DiscoveryRequest)
	errc := make(chan error, 1)
	go receive(ctx, stream.Recv, reqs, errc)

	var (
		names       []string
		nonce       string
		sentVersion string
		seq         int
		named       bool
	)
	send := func(report bool) error {
		res, failed := s.resolve(ctx, names)
		if report {
			reportFailures(ctx, log, failed, names)
		}
		if len(res) == 0 {
			return nil
		}
		versions := make([]string, len(res))
		out := &discoveryv3.DiscoveryResponse{TypeUrl: SecretType}
		for i, r := range res {
			versions[i] = r.name + "=" + r.version
			out.Resources = append(out.Resources, r.any)
		}
		version := strings.Join(versions, ",")
		if !report && version == sentVersion {
			return nil // nothing changed for this stream
		}
		seq++
		out.VersionInfo, out.Nonce = version, strconv.Itoa(seq)
		if err := stream.Send(out); err != nil {
			return fmt.Errorf("sending secrets: %w", err)
		}
		nonce, sentVersion = out.Nonce, version
		log.Debug("secrets sent", "version", version, "nonce", out.Nonce)
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return streamEnd(log, err)
		case req := <-reqs:
			if t := req.GetTypeUrl(); t != "" && t != SecretType {
				log.Warn("request for another type than secrets ignored", "typeUrl", t)
				continue
			}
			if id := req.GetNode().GetId(); id != "" && !named {
				named, log = true, log.With("node", id)
			}
			want := normalize(req.GetResourceNames())
			if n := req.GetResponseNonce(); n != "" {
				if n != nonce {
					continue // answers an older response; the newer one's answer will follow
				}
				if e := req.GetErrorDetail(); e != nil {
					log.Warn("secrets rejected (NACK)", "version", req.GetVersionInfo(), "error", e.GetMessage())
				} else {
					log.Debug("secrets accepted (ACK)", "version", req.GetVersionInfo())
				}
				if slices.Equal(want, names) {
					continue
				}
			}
			names = want
			if err := send(true); err != nil {
				return err
			}
		case <-updates:
			if err := send(false); err != nil {
				return err
			}
		}
	}
}

// DeltaSecrets is the incremental protocol: requests subscribe to and unsubscribe from names; a response
// carries only the secrets whose version the client does not have.
func (s *service) DeltaSecrets(stream grpc.BidiStreamingServer[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]) error {
	ctx := stream.Context()
	id := s.streams.Add(1)
	log := s.log.With("stream", id, "protocol", "delta")
	updates, unsubscribe := s.secrets.Subscribe()
	defer unsubscribe()
	reqs := make(chan *discoveryv3.DeltaDiscoveryRequest)
	errc := make(chan error, 1)
	go receive(ctx, stream.Recv, reqs, errc)

	var (
		subscribed []string
		// has is the version the client has of each subscribed secret: sent, or declared on reconnection.
		has   = map[string]string{}
		first = true
		seq   int
	)
	push := func(report []string) error {
		res, failed := s.resolve(ctx, subscribed)
		// Only the names just subscribed: a rotation must not repeat the complaint.
		reportFailures(ctx, log, failed, report)
		out := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: SecretType}
		var versions []string
		for _, r := range res {
			if has[r.name] == r.version {
				continue
			}
			out.Resources = append(out.Resources, &discoveryv3.Resource{Name: r.name, Version: r.version, Resource: r.any})
			versions = append(versions, r.name+"="+r.version)
		}
		if len(out.Resources) == 0 {
			return nil
		}
		seq++
		out.SystemVersionInfo, out.Nonce = strings.Join(versions, ","), strconv.Itoa(seq)
		if err := stream.Send(out); err != nil {
			return fmt.Errorf("sending secrets: %w", err)
		}
		for _, r := range out.Resources {
			has[r.Name] = r.Version
		}
		log.Debug("secrets sent", "versions", out.SystemVersionInfo, "nonce", out.Nonce)
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return streamEnd(log, err)
		case req := <-reqs:
			if t := req.GetTypeUrl(); t != "" && t != SecretType {
				log.Warn("request for another type than secrets ignored", "typeUrl", t)
				continue
			}
			if first {
				first = false
				log = log.With("node", req.GetNode().GetId())
				for name, v := range req.GetInitialResourceVersions() {
					has[name] = v
				}
			}
			if n := req.GetResponseNonce(); n != "" {
				if e := req.GetErrorDetail(); e != nil {
					log.Warn("secrets rejected (NACK)", "nonce", n, "error", e.GetMessage())
				} else {
					log.Debug("secrets accepted (ACK)", "nonce", n)
				}
			}
			var added []string
			for _, name := range req.GetResourceNamesSubscribe() {
				if name == "*" {
					log.Warn("wildcard subscription ignored: secrets are served by name")
					continue
				}
				if !slices.Contains(subscribed, name) {
					subscribed = append(subscribed, name)
					added = append(added, name)
				}
			}
			for _, name := range req.GetResourceNamesUnsubscribe() {
				subscribed = slices.DeleteFunc(subscribed, func(n string) bool { return n == name })
				delete(has, name)
			}
			if err := push(added); err != nil {
				return err
			}
		case <-updates:
			if err := push(nil); err != nil {
				return err
			}
		}
	}
}

// normalize sorts and deduplicates names, so that the same subscription compares equal.
func normalize(names []string) []string {
	out := slices.Clone(names)
	slices.Sort(out)
	return slices.Compact(out)
}
