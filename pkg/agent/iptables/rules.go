package iptables

import (
	"fmt"
	"strconv"
	"strings"
)

// Chain names, as in Istio's rule set.
const (
	ChainInbound    = "ISTIO_INBOUND"
	ChainInRedirect = "ISTIO_IN_REDIRECT"
	ChainOutput     = "ISTIO_OUTPUT"
	ChainRedirect   = "ISTIO_REDIRECT"
	ChainDivert     = "ISTIO_DIVERT"
	ChainTProxy     = "ISTIO_TPROXY"
)

// rule is one "-A" line. Fields are printed in the order iptables-save
// uses (source, destination, in, out, protocol, matches, target), so the
// generated text matches what iptables-save prints after it was applied.
type rule struct {
	chain   string
	src     string
	notDst  bool
	dst     string
	in      string
	out     string
	proto   string
	matches []string
	target  string
}

func (r rule) String() string {
	var b strings.Builder
	b.WriteString("-A ")
	b.WriteString(r.chain)
	if r.src != "" {
		b.WriteString(" -s " + r.src)
	}
	if r.dst != "" {
		if r.notDst {
			b.WriteString(" !")
		}
		b.WriteString(" -d " + r.dst)
	}
	if r.in != "" {
		b.WriteString(" -i " + r.in)
	}
	if r.out != "" {
		b.WriteString(" -o " + r.out)
	}
	if r.proto != "" {
		b.WriteString(" -p " + r.proto)
	}
	for _, m := range r.matches {
		b.WriteString(" " + m)
	}
	b.WriteString(" -j " + r.target)
	return b.String()
}

type table struct {
	name   string
	chains []string
	rules  []rule
}

func (t *table) add(r rule) { t.rules = append(t.rules, r) }

func (t *table) write(b *strings.Builder) {
	fmt.Fprintf(b, "*%s\n", t.name)
	for _, c := range t.chains {
		fmt.Fprintf(b, ":%s - [0:0]\n", c)
	}
	for _, r := range t.rules {
		b.WriteString(r.String())
		b.WriteByte('\n')
	}
	b.WriteString("COMMIT\n")
}

func dport(p uint16) string  { return "-m tcp --dport " + strconv.Itoa(int(p)) }
func udport(p uint16) string { return "-m udp --dport " + strconv.Itoa(int(p)) }
func uidOwner(neg bool, id uint32) string {
	if neg {
		return "-m owner ! --uid-owner " + strconv.FormatUint(uint64(id), 10)
	}
	return "-m owner --uid-owner " + strconv.FormatUint(uint64(id), 10)
}
func gidOwner(neg bool, id uint32) string {
	if neg {
		return "-m owner ! --gid-owner " + strconv.FormatUint(uint64(id), 10)
	}
	return "-m owner --gid-owner " + strconv.FormatUint(uint64(id), 10)
}
func hexMark(v uint32) string { return "0x" + strconv.FormatUint(uint64(v), 16) }

// Rules returns the rule set in iptables-save / iptables-restore format:
// the nat table, followed by the mangle table in TPROXY mode. The output is
// a pure function of the Config. It declares only Istio's own chains (the
// built-in chains' policies are left alone), so it is meant for
// `iptables-restore --noflush`.
func (c *Config) Rules() string {
	var b strings.Builder
	nat := c.natTable()
	nat.write(&b)
	if c.Mode == ModeTProxy {
		m := c.mangleTable()
		m.write(&b)
	}
	return b.String()
}

func (c *Config) captureInbound() bool {
	return c.IncludeAllInbound || len(c.IncludeInbound) > 0
}

func (c *Config) natTable() *table {
	t := &table{name: "nat", chains: []string{ChainInbound, ChainInRedirect, ChainOutput, ChainRedirect}}
	proxyPort := strconv.Itoa(int(c.ProxyPort))
	inPort := strconv.Itoa(int(c.InboundCapturePort))

	t.add(rule{chain: ChainRedirect, proto: "tcp", target: "REDIRECT --to-ports " + proxyPort})
	t.add(rule{chain: ChainInRedirect, proto: "tcp", target: "REDIRECT --to-ports " + inPort})

	// Traffic arriving on KubeVirt interfaces comes from a VM behind the
	// pod and is handled as that VM's outbound traffic.
	for _, iface := range c.KubeVirtInterfaces {
		for _, p := range c.ExcludeOutbound {
			t.add(rule{chain: "PREROUTING", dst: p.String(), in: iface, target: "RETURN"})
		}
		if c.IncludeAllOutbound {
			t.add(rule{chain: "PREROUTING", in: iface, target: ChainRedirect})
		} else {
			for _, p := range c.IncludeOutbound {
				t.add(rule{chain: "PREROUTING", dst: p.String(), in: iface, target: ChainRedirect})
			}
			// Not for the mesh: not inbound either.
			t.add(rule{chain: "PREROUTING", in: iface, target: "RETURN"})
		}
	}

	// Inbound: in REDIRECT mode the nat table does the capture; in TPROXY
	// mode the mangle table does it and nat's ISTIO_INBOUND stays empty.
	if c.captureInbound() && c.Mode == ModeRedirect {
		t.add(rule{chain: "PREROUTING", proto: "tcp", target: ChainInbound})
		c.inboundRules(t, ChainInRedirect, nil)
	}

	// Outbound.
	t.add(rule{chain: "OUTPUT", proto: "tcp", target: ChainOutput})
	if c.RedirectDNS {
		t.add(rule{chain: "OUTPUT", proto: "udp", target: ChainOutput})
	}
	for _, p := range c.ExcludeOutboundPorts {
		t.add(rule{chain: ChainOutput, proto: "tcp", matches: []string{dport(p)}, target: "RETURN"})
	}
	if c.RedirectDNS {
		c.dnsRules(t)
	}
	// The proxy's inbound passthrough connections to the app.
	t.add(rule{chain: ChainOutput, src: InboundPassthroughSource, out: "lo", target: "RETURN"})
	// The proxy calling the pod's own (non-localhost) address goes through
	// inbound capture; other processes' loopback traffic is left alone; the
	// proxy's own traffic is never captured.
	t.add(rule{chain: ChainOutput, notDst: true, dst: localhost, out: "lo", proto: "tcp", matches: []string{uidOwner(false, c.ProxyUID)}, target: ChainInRedirect})
	t.add(rule{chain: ChainOutput, out: "lo", matches: []string{uidOwner(true, c.ProxyUID)}, target: "RETURN"})
	t.add(rule{chain: ChainOutput, matches: []string{uidOwner(false, c.ProxyUID)}, target: "RETURN"})
	t.add(rule{chain: ChainOutput, notDst: true, dst: localhost, out: "lo", proto: "tcp", matches: []string{gidOwner(false, c.ProxyGID)}, target: ChainInRedirect})
	t.add(rule{chain: ChainOutput, out: "lo", matches: []string{gidOwner(true, c.ProxyGID)}, target: "RETURN"})
	t.add(rule{chain: ChainOutput, matches: []string{gidOwner(false, c.ProxyGID)}, target: "RETURN"})
	t.add(rule{chain: ChainOutput, dst: localhost, target: "RETURN"})
	for _, p := range c.ExcludeOutbound {
		t.add(rule{chain: ChainOutput, dst: p.String(), target: "RETURN"})
	}
	if c.IncludeAllOutbound {
		t.add(rule{chain: ChainOutput, target: ChainRedirect})
	} else {
		for _, p := range c.IncludeOutbound {
			t.add(rule{chain: ChainOutput, dst: p.String(), target: ChainRedirect})
		}
	}
	return t
}

// inboundRules appends ISTIO_INBOUND's port selection, jumping to target;
// extra matches (e.g. conntrack state) are added to each capturing rule.
func (c *Config) inboundRules(t *table, target string, extra []string) {
	if c.IncludeAllInbound {
		// SSH is never captured when capturing every port.
		t.add(rule{chain: ChainInbound, proto: "tcp", matches: []string{dport(sshPort)}, target: "RETURN"})
		for _, p := range c.ExcludeInbound {
			if p == sshPort {
				continue
			}
			t.add(rule{chain: ChainInbound, proto: "tcp", matches: []string{dport(p)}, target: "RETURN"})
		}
		t.add(rule{chain: ChainInbound, proto: "tcp", matches: extra, target: target})
		return
	}
	for _, p := range c.IncludeInbound {
		t.add(rule{chain: ChainInbound, proto: "tcp", matches: append(append([]string(nil), extra...), dport(p)), target: target})
	}
}

func (c *Config) mangleTable() *table {
	t := &table{name: "mangle", chains: []string{ChainDivert, ChainInbound, ChainTProxy}}
	mark := hexMark(c.TProxyMark)
	markMask := mark + "/0xffffffff"

	t.add(rule{chain: ChainDivert, target: "MARK --set-xmark " + markMask})
	t.add(rule{chain: ChainDivert, target: "ACCEPT"})
	t.add(rule{chain: ChainTProxy, notDst: true, dst: localhost, proto: "tcp",
		target: "TPROXY --on-port " + strconv.Itoa(int(c.InboundCapturePort)) + " --on-ip 0.0.0.0 --tproxy-mark " + markMask})
	// Keep the mark on the whole connection so that replies leave through
	// the policy route for marked packets.
	t.add(rule{chain: "PREROUTING", proto: "tcp", matches: []string{"-m mark --mark " + mark}, target: "CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"})
	t.add(rule{chain: "OUTPUT", proto: "tcp", matches: []string{"-m connmark --mark " + mark}, target: "CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"})
	if !c.captureInbound() {
		return t
	}
	// KubeVirt interfaces carry a VM's outbound traffic, handled in nat.
	for _, iface := range c.KubeVirtInterfaces {
		t.add(rule{chain: "PREROUTING", in: iface, target: "RETURN"})
	}
	t.add(rule{chain: "PREROUTING", proto: "tcp", target: ChainInbound})
	// Packets of already diverted connections only need the mark.
	established := []string{"-m conntrack --ctstate RELATED,ESTABLISHED"}
	if c.IncludeAllInbound {
		t.add(rule{chain: ChainInbound, proto: "tcp", matches: []string{dport(sshPort)}, target: "RETURN"})
		for _, p := range c.ExcludeInbound {
			if p != sshPort {
				t.add(rule{chain: ChainInbound, proto: "tcp", matches: []string{dport(p)}, target: "RETURN"})
			}
		}
		t.add(rule{chain: ChainInbound, proto: "tcp", matches: established, target: ChainDivert})
		t.add(rule{chain: ChainInbound, proto: "tcp", target: ChainTProxy})
		return t
	}
	for _, p := range c.IncludeInbound {
		t.add(rule{chain: ChainInbound, proto: "tcp", matches: append(append([]string(nil), established...), dport(p)), target: ChainDivert})
		t.add(rule{chain: ChainInbound, proto: "tcp", matches: []string{dport(p)}, target: ChainTProxy})
	}
	return t
}

// dnsRules sends DNS (UDP and TCP port 53) from everyone but the proxy to
// the agent's DNS proxy: to every server with --capture-all-dns, else only
// to the resolv.conf nameservers. They come first in ISTIO_OUTPUT so that
// loopback resolvers are captured too.
func (c *Config) dnsRules(t *table) {
	for _, proto := range []string{"tcp", "udp"} {
		m := dport(53)
		if proto == "udp" {
			m = udport(53)
		}
		t.add(rule{chain: ChainOutput, proto: proto, matches: []string{m, uidOwner(false, c.ProxyUID)}, target: "RETURN"})
		t.add(rule{chain: ChainOutput, proto: proto, matches: []string{m, gidOwner(false, c.ProxyGID)}, target: "RETURN"})
	}
	target := "REDIRECT --to-ports " + strconv.Itoa(int(c.DNSPort))
	for _, proto := range []string{"tcp", "udp"} {
		m := dport(53)
		if proto == "udp" {
			m = udport(53)
		}
		if c.CaptureAllDNS {
			t.add(rule{chain: ChainOutput, proto: proto, matches: []string{m}, target: target})
			continue
		}
		for _, ns := range c.DNSServers {
			t.add(rule{chain: ChainOutput, dst: ns.String() + "/32", proto: proto, matches: []string{m}, target: target})
		}
	}
}
