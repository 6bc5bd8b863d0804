// Package iptables builds and applies the traffic-capture rules of the
// sidecar agent's `istio-iptables` command: the nat (and, in TPROXY mode,
// mangle) rules that send a pod's outbound TCP to the proxy's outbound port,
// its inbound TCP to the inbound capture port and, optionally, its DNS to the
// agent's DNS proxy. Only IPv4 (iptables) is generated; IPv6 ranges are
// rejected by Parse.
package iptables

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// Interception modes for inbound traffic.
const (
	ModeRedirect = "REDIRECT"
	ModeTProxy   = "TPROXY"
)

// Config holds the options of `istio-iptables`.
type Config struct {
	ProxyPort          uint16 // -p: outbound capture port (proxy listener)
	InboundCapturePort uint16 // -z: inbound capture port
	ProxyUID           uint32 // -u
	ProxyGID           uint32 // -g (defaults to ProxyUID)
	Mode               string // -m: REDIRECT or TPROXY

	// Outbound IP ranges. IncludeAllOutbound is set by "*" in -i.
	IncludeAllOutbound bool
	IncludeOutbound    []netip.Prefix // -i (when not "*")
	ExcludeOutbound    []netip.Prefix // -x

	// Inbound ports. IncludeAllInbound is set by "*" in -b.
	IncludeAllInbound bool
	IncludeInbound    []uint16 // -b (when not "*")
	ExcludeInbound    []uint16 // -d

	ExcludeOutboundPorts []uint16 // -o
	KubeVirtInterfaces   []string // -k

	TProxyMark uint32 // -t: mark used for TPROXY (default 1337)

	RedirectDNS   bool         // --redirect-dns
	CaptureAllDNS bool         // --capture-all-dns
	DNSPort       uint16       // agent DNS proxy port, 15053
	DNSServers    []netip.Addr // captured servers when !CaptureAllDNS (from resolv.conf)

	DryRun bool // -n/--dry-run: print instead of applying
}

// Fixed addresses and ports that Istio's rule set builds in.
const (
	// InboundPassthroughSource is the source the proxy binds to when it
	// forwards inbound traffic to the application over loopback; that
	// traffic must not be captured again.
	InboundPassthroughSource = "127.0.0.6/32"
	localhost                = "127.0.0.1/32"
	sshPort                  = 22
	defaultDNSPort           = 15053
)

// ResolvConfPath is where Parse reads nameservers to capture when DNS
// redirection is enabled without --capture-all-dns.
var ResolvConfPath = "/etc/resolv.conf"

// Parse parses istio-iptables arguments (short and long spellings).
func Parse(args []string) (*Config, error) {
	fs := pflag.NewFlagSet("istio-iptables", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	var (
		proxyPort    = fs.StringP("envoy-port", "p", "15001", "outbound capture port")
		inboundPort  = fs.StringP("inbound-capture-port", "z", "15006", "inbound capture port")
		uid          = fs.StringP("proxy-uid", "u", "1337", "proxy UID")
		gid          = fs.StringP("proxy-gid", "g", "", "proxy GID (default: the UID)")
		mode         = fs.StringP("istio-inbound-interception-mode", "m", ModeRedirect, "REDIRECT or TPROXY")
		include      = fs.StringP("istio-service-cidr", "i", "*", "outbound IP ranges to capture")
		exclude      = fs.StringP("istio-service-exclude-cidr", "x", "", "outbound IP ranges not to capture")
		inPorts      = fs.StringP("istio-inbound-ports", "b", "*", "inbound ports to capture")
		inExclude    = fs.StringP("istio-local-exclude-ports", "d", "", "inbound ports not to capture")
		outExclude   = fs.StringP("istio-local-outbound-ports-exclude", "o", "", "outbound ports not to capture")
		ifaces       = fs.StringP("kube-virt-interfaces", "k", "", "interfaces whose inbound traffic is treated as outbound")
		mark         = fs.StringP("istio-inbound-tproxy-mark", "t", "1337", "TPROXY mark")
		redirectDNS  = fs.Bool("redirect-dns", false, "capture DNS to the agent's DNS proxy")
		captureAll   = fs.Bool("capture-all-dns", false, "capture DNS to every server, not only resolv.conf's")
		dryRun       = fs.BoolP("dry-run", "n", false, "print the rules instead of applying them")
		flagErrorFor = func(long string, err error) error {
			f := fs.Lookup(long)
			return fmt.Errorf("istio-iptables: flag -%s/--%s: %w", f.Shorthand, f.Name, err)
		}
	)
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("istio-iptables: %w", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("istio-iptables: unexpected argument %q", fs.Arg(0))
	}

	c := &Config{DNSPort: defaultDNSPort, RedirectDNS: *redirectDNS, CaptureAllDNS: *captureAll, DryRun: *dryRun}
	var err error
	if c.ProxyPort, err = parsePort(*proxyPort); err != nil {
		return nil, flagErrorFor("envoy-port", err)
	}
	if c.InboundCapturePort, err = parsePort(*inboundPort); err != nil {
		return nil, flagErrorFor("inbound-capture-port", err)
	}
	if c.ProxyUID, err = parseID(*uid); err != nil {
		return nil, flagErrorFor("proxy-uid", err)
	}
	c.ProxyGID = c.ProxyUID
	if fs.Changed("proxy-gid") {
		if c.ProxyGID, err = parseID(*gid); err != nil {
			return nil, flagErrorFor("proxy-gid", err)
		}
	}
	switch strings.ToUpper(strings.TrimSpace(*mode)) {
	case ModeRedirect:
		c.Mode = ModeRedirect
	case ModeTProxy:
		c.Mode = ModeTProxy
	default:
		return nil, flagErrorFor("istio-inbound-interception-mode", fmt.Errorf("mode %q is neither REDIRECT nor TPROXY", *mode))
	}
	if c.IncludeAllOutbound, c.IncludeOutbound, err = parseCIDRs(*include, true); err != nil {
		return nil, flagErrorFor("istio-service-cidr", err)
	}
	if _, c.ExcludeOutbound, err = parseCIDRs(*exclude, false); err != nil {
		return nil, flagErrorFor("istio-service-exclude-cidr", err)
	}
	if c.IncludeAllInbound, c.IncludeInbound, err = parsePorts(*inPorts, true); err != nil {
		return nil, flagErrorFor("istio-inbound-ports", err)
	}
	if _, c.ExcludeInbound, err = parsePorts(*inExclude, false); err != nil {
		return nil, flagErrorFor("istio-local-exclude-ports", err)
	}
	if _, c.ExcludeOutboundPorts, err = parsePorts(*outExclude, false); err != nil {
		return nil, flagErrorFor("istio-local-outbound-ports-exclude", err)
	}
	if c.KubeVirtInterfaces, err = parseInterfaces(*ifaces); err != nil {
		return nil, flagErrorFor("kube-virt-interfaces", err)
	}
	if c.TProxyMark, err = parseID(*mark); err != nil || c.TProxyMark == 0 {
		if err == nil {
			err = errors.New("mark must not be 0")
		}
		return nil, flagErrorFor("istio-inbound-tproxy-mark", err)
	}
	if c.RedirectDNS && !c.CaptureAllDNS {
		if c.DNSServers, err = readNameservers(ResolvConfPath); err != nil {
			return nil, fmt.Errorf("istio-iptables: flag --redirect-dns: %w", err)
		}
	}
	return c, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("invalid port %q (want 1-65535)", s)
	}
	return uint16(n), nil
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid number %q", s)
	}
	return uint32(n), nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseCIDRs parses a comma-separated list of IPv4 ranges (bare addresses
// mean /32). "*" is accepted only when allowStar is set.
func parseCIDRs(s string, allowStar bool) (all bool, out []netip.Prefix, err error) {
	for _, f := range splitList(s) {
		if f == "*" {
			if !allowStar {
				return false, nil, errors.New(`"*" is not allowed here`)
			}
			all = true
			continue
		}
		var p netip.Prefix
		if strings.Contains(f, "/") {
			p, err = netip.ParsePrefix(f)
		} else {
			var a netip.Addr
			if a, err = netip.ParseAddr(f); err == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			}
		}
		if err != nil {
			return false, nil, fmt.Errorf("invalid IP range %q", f)
		}
		if !p.Addr().Is4() {
			return false, nil, fmt.Errorf("IP range %q is IPv6; only IPv4 is supported", f)
		}
		out = append(out, p.Masked())
	}
	if all {
		out = nil // "*" subsumes any explicit range
	}
	return all, dedupPrefixes(out), nil
}

func dedupPrefixes(ps []netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// parsePorts parses a comma-separated port list, keeping the given order
// (duplicates dropped). "*" is accepted only when allowStar is set.
func parsePorts(s string, allowStar bool) (all bool, out []uint16, err error) {
	seen := map[uint16]bool{}
	for _, f := range splitList(s) {
		if f == "*" {
			if !allowStar {
				return false, nil, errors.New(`"*" is not allowed here`)
			}
			all = true
			continue
		}
		p, err := parsePort(f)
		if err != nil {
			return false, nil, err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	if all {
		out = nil
	}
	return all, out, nil
}

func parseInterfaces(s string) ([]string, error) {
	var out []string
	for _, f := range splitList(s) {
		if len(f) > 15 || strings.ContainsAny(f, " /\t") {
			return nil, fmt.Errorf("invalid interface name %q", f)
		}
		out = append(out, f)
	}
	return out, nil
}

// readNameservers returns the IPv4 nameservers in a resolv.conf, sorted.
func readNameservers(path string) ([]netip.Addr, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading nameservers: %w", err)
	}
	defer f.Close()
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil || !a.Is4() || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, a)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading nameservers from %s: %w", path, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out, nil
}
