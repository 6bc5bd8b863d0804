package clusters

import (
	"net/netip"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	xdstype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	meshconfig "istio.io/api/mesh/v1alpha1"
	networking "istio.io/api/networking/v1alpha3"

	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/networking/util"
)

const (
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	tlsTransportSocket     = "envoy.transport_sockets.tls"

	// Envoy's validation limits: values beyond them would get the whole CDS response rejected.
	maxRingSize     = 8388608
	maxMaglevTable  = 5000011
	maxSNILength    = 255
	defaultRingSize = 1024
	enforcingAlways = 100
	maxPercent      = 100
	maxH2Streams    = 2147483647
)

// mergedPolicy is the traffic policy in force for one port of one subset, the way Istio resolves it: the rule's
// top-level policy, replaced wholesale by its portLevelSettings entry for the port when there is one; then each of
// the subset's connectionPool, loadBalancer, outlierDetection and tls replaces the inherited one when set. A
// subset's own portLevelSettings entry for the port replaces all four, set or not (port-level policies do not
// inherit). Nil when nothing applies.
func mergedPolicy(dr *model.DestinationRuleEntry, subset *networking.Subset, port int) *networking.TrafficPolicy {
	var top *networking.TrafficPolicy
	if dr != nil {
		top = dr.Spec.GetTrafficPolicy()
	}
	base, _ := portPolicy(top, port)
	sub, portLevel := portPolicy(subset.GetTrafficPolicy(), port)
	if sub == nil {
		return base
	}
	if base == nil {
		return sub
	}
	m := &networking.TrafficPolicy{
		ConnectionPool:   base.ConnectionPool,
		LoadBalancer:     base.LoadBalancer,
		OutlierDetection: base.OutlierDetection,
		Tls:              base.Tls,
	}
	if sub.ConnectionPool != nil || portLevel {
		m.ConnectionPool = sub.ConnectionPool
	}
	if sub.LoadBalancer != nil || portLevel {
		m.LoadBalancer = sub.LoadBalancer
	}
	if sub.OutlierDetection != nil || portLevel {
		m.OutlierDetection = sub.OutlierDetection
	}
	if sub.Tls != nil || portLevel {
		m.Tls = sub.Tls
	}
	return m
}

// portPolicy returns the portLevelSettings entry of p for port as a policy (and true), else p itself.
func portPolicy(p *networking.TrafficPolicy, port int) (*networking.TrafficPolicy, bool) {
	if p == nil {
		return nil, false
	}
	for _, pl := range p.PortLevelSettings {
		if pl.GetPort().GetNumber() == uint32(port) {
			return &networking.TrafficPolicy{
				ConnectionPool:   pl.ConnectionPool,
				LoadBalancer:     pl.LoadBalancer,
				OutlierDetection: pl.OutlierDetection,
				Tls:              pl.Tls,
			}, true
		}
	}
	return p, false
}

// httpOptions collects what goes into the cluster's HttpProtocolOptions extension while the policy is applied.
type httpOptions struct {
	common               *core.HttpProtocolOptions
	upstream             *core.UpstreamHttpProtocolOptions
	useDownstream        bool
	maxConcurrentStreams uint32
}

func (o *httpOptions) commonOpts() *core.HttpProtocolOptions {
	if o.common == nil {
		o.common = &core.HttpProtocolOptions{}
	}
	return o.common
}

// build returns the typed_extension_protocol_options map, or nil when the cluster needs none (plain HTTP/1.1
// or TCP with defaults). Envoy requires an upstream protocol choice whenever the extension is present.
func (o *httpOptions) build(h2 bool) map[string]*anypb.Any {
	if !h2 && o.common == nil && o.upstream == nil && !o.useDownstream {
		return nil
	}
	opts := &httpv3.HttpProtocolOptions{CommonHttpProtocolOptions: o.common, UpstreamHttpProtocolOptions: o.upstream}
	h2opts := &core.Http2ProtocolOptions{}
	if o.maxConcurrentStreams > 0 {
		h2opts.MaxConcurrentStreams = wrapperspb.UInt32(min(o.maxConcurrentStreams, maxH2Streams))
	}
	switch {
	case o.useDownstream:
		opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &core.Http1ProtocolOptions{},
				Http2ProtocolOptions: h2opts,
			},
		}
	case h2:
		opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: h2opts},
			},
		}
	default:
		opts.UpstreamProtocolOptions = &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{
					HttpProtocolOptions: &core.Http1ProtocolOptions{},
				},
			},
		}
	}
	return map[string]*anypb.Any{httpProtocolOptionsKey: util.MessageToAny(opts)}
}

// shouldH2Upgrade applies the DestinationRule's h2UpgradePolicy, else the mesh's, to HTTP/1.1 ports. An explicit
// UPGRADE in the rule wins even for ports not declared HTTP: the user says the port speaks HTTP.
func shouldH2Upgrade(port *model.Port, mesh *meshconfig.MeshConfig, pool *networking.ConnectionPoolSettings) bool {
	switch pool.GetHttp().GetH2UpgradePolicy() {
	case networking.ConnectionPoolSettings_HTTPSettings_UPGRADE:
		return true
	case networking.ConnectionPoolSettings_HTTPSettings_DO_NOT_UPGRADE:
		return false
	}
	return port.Protocol.IsHTTP() && mesh.GetH2UpgradePolicy() == meshconfig.MeshConfig_UPGRADE
}

// applyConnectionPool maps connectionPool onto the circuit breaker thresholds (already defaulted), the connect
// timeout, TCP keepalive (mesh default, then the rule) and the HTTP protocol options.
func applyConnectionPool(c *cluster.Cluster, opts *httpOptions, mesh *meshconfig.MeshConfig,
	pool *networking.ConnectionPoolSettings,
) {
	th := c.CircuitBreakers.Thresholds[0]
	var idle *durationpb.Duration
	if h := pool.GetHttp(); h != nil {
		if h.Http2MaxRequests > 0 {
			th.MaxRequests = wrapperspb.UInt32(uint32(h.Http2MaxRequests))
		}
		if h.Http1MaxPendingRequests > 0 {
			th.MaxPendingRequests = wrapperspb.UInt32(uint32(h.Http1MaxPendingRequests))
		}
		if h.MaxRetries > 0 {
			th.MaxRetries = wrapperspb.UInt32(uint32(h.MaxRetries))
		}
		if positive(h.IdleTimeout) {
			idle = h.IdleTimeout
		}
		if h.MaxRequestsPerConnection > 0 {
			opts.commonOpts().MaxRequestsPerConnection = wrapperspb.UInt32(uint32(h.MaxRequestsPerConnection))
		}
		if h.MaxConcurrentStreams > 0 {
			opts.maxConcurrentStreams = uint32(h.MaxConcurrentStreams)
		}
		opts.useDownstream = h.UseClientProtocol
	}
	if t := pool.GetTcp(); t != nil {
		if t.MaxConnections > 0 {
			th.MaxConnections = wrapperspb.UInt32(uint32(t.MaxConnections))
		}
		if positive(t.ConnectTimeout) {
			c.ConnectTimeout = durationpb.New(t.ConnectTimeout.AsDuration())
		}
		if positive(t.MaxConnectionDuration) {
			opts.commonOpts().MaxConnectionDuration = durationpb.New(t.MaxConnectionDuration.AsDuration())
		}
		if idle == nil && positive(t.IdleTimeout) {
			idle = t.IdleTimeout
		}
	}
	if idle != nil {
		opts.commonOpts().IdleTimeout = durationpb.New(idle.AsDuration())
	}
	if ka := tcpKeepalive(mesh.GetTcpKeepalive(), pool.GetTcp().GetTcpKeepalive()); ka != nil {
		c.UpstreamConnectionOptions = &cluster.UpstreamConnectionOptions{TcpKeepalive: ka}
	}
}

// tcpKeepalive layers the rule's keepalive settings over the mesh's; nil when neither sets any.
func tcpKeepalive(layers ...*networking.ConnectionPoolSettings_TCPSettings_TcpKeepalive) *core.TcpKeepalive {
	var ka *core.TcpKeepalive
	for _, l := range layers {
		if l == nil {
			continue
		}
		if ka == nil {
			ka = &core.TcpKeepalive{}
		}
		if l.Probes > 0 {
			ka.KeepaliveProbes = wrapperspb.UInt32(l.Probes)
		}
		if positive(l.Time) {
			ka.KeepaliveTime = wrapperspb.UInt32(seconds(l.Time))
		}
		if positive(l.Interval) {
			ka.KeepaliveInterval = wrapperspb.UInt32(seconds(l.Interval))
		}
	}
	return ka
}

func seconds(d *durationpb.Duration) uint32 {
	s := d.AsDuration() / time.Second
	if s < 1 {
		return 1 // Envoy counts keepalive in whole seconds; sub-second values mean "as often as possible"
	}
	return uint32(min(int64(s), int64(^uint32(0))))
}

// applyOutlierDetection translates outlierDetection like Istio: success-rate ejection off, consecutive 5xx and
// gateway errors enforced at 100%, and healthy_panic_threshold set from minHealthPercent (0, the default, turns
// panic mode off: with few pods per service Envoy would otherwise ignore health at the first ejection).
func applyOutlierDetection(c *cluster.Cluster, od *networking.OutlierDetection) {
	if od == nil {
		return
	}
	out := &cluster.OutlierDetection{EnforcingSuccessRate: wrapperspb.UInt32(0)}
	if e := od.GetConsecutive_5XxErrors(); e != nil {
		out.Consecutive_5Xx = wrapperspb.UInt32(e.Value)
		out.EnforcingConsecutive_5Xx = wrapperspb.UInt32(enforcing(e.Value))
	}
	if e := od.GetConsecutiveGatewayErrors(); e != nil {
		out.ConsecutiveGatewayFailure = wrapperspb.UInt32(e.Value)
		out.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(enforcing(e.Value))
	}
	if positive(od.Interval) {
		out.Interval = durationpb.New(od.Interval.AsDuration())
	}
	if positive(od.BaseEjectionTime) {
		out.BaseEjectionTime = durationpb.New(od.BaseEjectionTime.AsDuration())
	}
	if od.MaxEjectionPercent > 0 {
		out.MaxEjectionPercent = wrapperspb.UInt32(uint32(min(od.MaxEjectionPercent, maxPercent)))
	}
	if od.SplitExternalLocalOriginErrors {
		out.SplitExternalLocalOriginErrors = true
		if n := od.GetConsecutiveLocalOriginFailures().GetValue(); n > 0 {
			out.ConsecutiveLocalOriginFailure = wrapperspb.UInt32(n)
			out.EnforcingConsecutiveLocalOriginFailure = wrapperspb.UInt32(enforcingAlways)
		}
		out.EnforcingLocalOriginSuccessRate = wrapperspb.UInt32(0)
	}
	c.OutlierDetection = out
	if od.MinHealthPercent >= 0 {
		if c.CommonLbConfig == nil {
			c.CommonLbConfig = &cluster.Cluster_CommonLbConfig{}
		}
		c.CommonLbConfig.HealthyPanicThreshold = &xdstype.Percent{Value: float64(min(od.MinHealthPercent, maxPercent))}
	}
}

func enforcing(threshold uint32) uint32 {
	if threshold > 0 {
		return enforcingAlways
	}
	return 0
}

// applyLoadBalancer sets lb_policy (and its config) from loadBalancer. Sidecars follow Istio: LEAST_REQUEST by
// default, PASSTHROUGH turns the cluster into ORIGINAL_DST, consistentHash gives RING_HASH or MAGLEV. gRPC
// clients get only what grpc-go implements: ROUND_ROBIN (default), LEAST_REQUEST and RING_HASH (for any
// consistent hash, MAGLEV included).
func applyLoadBalancer(c *cluster.Cluster, lb *networking.LoadBalancerSettings, grpc bool) {
	if grpc {
		c.LbPolicy = cluster.Cluster_ROUND_ROBIN
		if ch := lb.GetConsistentHash(); ch != nil {
			c.LbPolicy = cluster.Cluster_RING_HASH
			if n := ringSize(ch); n > 0 {
				c.LbConfig = &cluster.Cluster_RingHashLbConfig_{RingHashLbConfig: &cluster.Cluster_RingHashLbConfig{
					MinimumRingSize: wrapperspb.UInt64(n),
				}}
			}
			return
		}
		switch lb.GetSimple() {
		case networking.LoadBalancerSettings_LEAST_REQUEST, networking.LoadBalancerSettings_LEAST_CONN: //nolint:staticcheck // LEAST_CONN is the deprecated spelling
			c.LbPolicy = cluster.Cluster_LEAST_REQUEST
		}
		return
	}
	if c.GetType() == cluster.Cluster_ORIGINAL_DST {
		c.LbPolicy = cluster.Cluster_CLUSTER_PROVIDED
		return
	}
	warmup := lb.GetWarmupDurationSecs()
	if !positive(warmup) {
		warmup = nil
	}
	switch lb.GetSimple() {
	case networking.LoadBalancerSettings_RANDOM:
		c.LbPolicy = cluster.Cluster_RANDOM
	case networking.LoadBalancerSettings_ROUND_ROBIN:
		c.LbPolicy = cluster.Cluster_ROUND_ROBIN
		if warmup != nil {
			c.LbConfig = &cluster.Cluster_RoundRobinLbConfig_{RoundRobinLbConfig: &cluster.Cluster_RoundRobinLbConfig{
				SlowStartConfig: &cluster.Cluster_SlowStartConfig{SlowStartWindow: warmup},
			}}
		}
	case networking.LoadBalancerSettings_PASSTHROUGH:
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}
		c.LbPolicy = cluster.Cluster_CLUSTER_PROVIDED
		return
	default: // LEAST_REQUEST, LEAST_CONN and unset
		c.LbPolicy = cluster.Cluster_LEAST_REQUEST
		if warmup != nil {
			c.LbConfig = &cluster.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &cluster.Cluster_LeastRequestLbConfig{
				SlowStartConfig: &cluster.Cluster_SlowStartConfig{SlowStartWindow: warmup},
			}}
		}
	}
	ch := lb.GetConsistentHash()
	if ch == nil {
		return
	}
	if m := ch.GetMaglev(); m != nil {
		c.LbPolicy = cluster.Cluster_MAGLEV
		c.LbConfig = nil
		if m.TableSize > 0 {
			c.LbConfig = &cluster.Cluster_MaglevLbConfig_{MaglevLbConfig: &cluster.Cluster_MaglevLbConfig{
				TableSize: wrapperspb.UInt64(min(m.TableSize, maxMaglevTable)),
			}}
		}
		return
	}
	c.LbPolicy = cluster.Cluster_RING_HASH
	c.LbConfig = nil
	n := ringSize(ch)
	if n == 0 && ch.GetRingHash() == nil {
		n = defaultRingSize // Istio always spells out Envoy's default for the deprecated form
	}
	if n > 0 {
		c.LbConfig = &cluster.Cluster_RingHashLbConfig_{RingHashLbConfig: &cluster.Cluster_RingHashLbConfig{
			MinimumRingSize: wrapperspb.UInt64(n),
		}}
	}
}

// ringSize is the minimum ring size a consistentHash asks for (ringHash.minimumRingSize, else the deprecated
// top-level field), capped at Envoy's limit; 0 when unset.
func ringSize(ch *networking.LoadBalancerSettings_ConsistentHashLB) uint64 {
	n := ch.GetRingHash().GetMinimumRingSize()
	if n == 0 {
		n = ch.GetMinimumRingSize() //nolint:staticcheck // the deprecated field is still honoured, as in Istio
	}
	return min(n, maxRingSize)
}

// upstreamTLS builds the transport socket for the DestinationRule's non-mesh TLS settings. SIMPLE and MUTUAL read
// the certificate files named in the rule; DISABLE (and no settings) means plaintext; ISTIO_MUTUAL and auto-mTLS
// are mesh mTLS (see sidecarMeshTLS), not handled here. Without sni, Envoy derives it from the request's host
// (auto_sni), and checks the server's SAN against it when the CA is known.
func upstreamTLS(tls *networking.ClientTLSSettings, h2 bool, opts *httpOptions) *core.TransportSocket {
	switch tls.GetMode() {
	case networking.ClientTLSSettings_SIMPLE, networking.ClientTLSSettings_MUTUAL:
	default:
		return nil
	}
	insecure := tls.GetInsecureSkipVerify().GetValue()
	ctx := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{}}
	if len(tls.Sni) <= maxSNILength {
		ctx.Sni = tls.Sni
	}
	if tls.Mode == networking.ClientTLSSettings_MUTUAL && tls.ClientCertificate != "" && tls.PrivateKey != "" {
		// TODO(SDS issue): Istio serves these files through the agent's SDS ("file-cert:<cert>~<key>") so that
		// rotation works, and resolves credentialName for sidecars too; inline files are read once by Envoy.
		ctx.CommonTlsContext.TlsCertificates = []*tlsv3.TlsCertificate{{
			CertificateChain: fileSource(tls.ClientCertificate),
			PrivateKey:       fileSource(tls.PrivateKey),
		}}
	}
	verify := tls.CaCertificates != "" && !insecure
	if verify {
		vc := &tlsv3.CertificateValidationContext{
			TrustedCa:                 fileSource(tls.CaCertificates),
			MatchTypedSubjectAltNames: sanMatchers(tls.SubjectAltNames),
		}
		if tls.CaCrl != "" {
			vc.Crl = fileSource(tls.CaCrl)
		}
		ctx.CommonTlsContext.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
	}
	// TODO(SDS issue): without caCertificates Istio verifies against the OS roots through the agent's
	// "file-root:system" secret; Envoy has no inline equivalent, so the server is not verified here.
	if h2 {
		ctx.CommonTlsContext.AlpnProtocols = []string{"h2"}
	}
	if ctx.Sni == "" {
		if opts.upstream == nil {
			opts.upstream = &core.UpstreamHttpProtocolOptions{}
		}
		opts.upstream.AutoSni = true
		opts.upstream.AutoSanValidation = verify && len(tls.SubjectAltNames) == 0
	}
	return &core.TransportSocket{
		Name:       tlsTransportSocket,
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: util.MessageToAny(ctx)},
	}
}

func fileSource(path string) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_Filename{Filename: path}}
}

// sanMatchers matches each expected SAN exactly, as a URI, an IP address or a DNS name depending on its form.
func sanMatchers(sans []string) []*tlsv3.SubjectAltNameMatcher {
	out := make([]*tlsv3.SubjectAltNameMatcher, 0, len(sans))
	for _, san := range sans {
		if san == "" {
			continue
		}
		t := tlsv3.SubjectAltNameMatcher_DNS
		if strings.Contains(san, "://") {
			t = tlsv3.SubjectAltNameMatcher_URI
		} else if _, err := netip.ParseAddr(san); err == nil {
			t = tlsv3.SubjectAltNameMatcher_IP_ADDRESS
		}
		out = append(out, &tlsv3.SubjectAltNameMatcher{
			SanType: t,
			Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: san}},
		})
	}
	return out
}
