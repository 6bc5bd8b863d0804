package validation

import (
	"slices"
	"strconv"

	security "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
)

func (v *validator) selector(path string, s *typev1beta1.WorkloadSelector) {
	if s == nil {
		return
	}
	v.labels(join(path, "matchLabels"), s.MatchLabels)
}

func (v *validator) peerAuthentication(pa *security.PeerAuthentication) {
	v.selector("selector", pa.Selector)
	if pa.Mtls != nil {
		v.enum("mtls.mode", pa.Mtls.Mode)
	}
	if len(pa.PortLevelMtls) > 0 && len(pa.Selector.GetMatchLabels()) == 0 {
		v.errf("portLevelMtls", "needs a selector with labels: port-level settings apply to the ports of specific workloads")
	}
	ports := make([]int, 0, len(pa.PortLevelMtls))
	for p := range pa.PortLevelMtls {
		ports = append(ports, int(p))
	}
	slices.Sort(ports)
	for _, p := range ports {
		path := key("portLevelMtls", strconv.Itoa(p))
		v.port(path, uint32(p))
		m := pa.PortLevelMtls[uint32(p)]
		if m == nil {
			v.errf(path, "needs a mode")
			continue
		}
		v.enum(join(path, "mode"), m.Mode)
	}
}

func (v *validator) authorizationPolicy(ap *security.AuthorizationPolicy) {
	v.selector("selector", ap.Selector)
	if ap.Selector != nil && (ap.TargetRef != nil || len(ap.TargetRefs) > 0) {
		v.errf("selector", "selector and targetRef(s) are mutually exclusive")
	}
	v.enum("action", ap.Action)
	provider := ap.GetProvider()
	switch {
	case ap.Action == security.AuthorizationPolicy_CUSTOM && provider.GetName() == "":
		v.errf("provider.name", "action CUSTOM needs a provider")
	case ap.Action != security.AuthorizationPolicy_CUSTOM && provider != nil:
		v.errf("provider", "only applies to action CUSTOM, not %s", ap.Action)
	}
	for i, r := range ap.Rules {
		rp := idx("rules", i)
		if r == nil {
			v.errf(rp, "must not be empty")
			continue
		}
		for j, f := range r.From {
			fp := idx(join(rp, "from"), j)
			if f.GetSource() == nil {
				v.errf(join(fp, "source"), "is required")
				continue
			}
			s := f.Source
			for _, list := range []struct {
				name string
				ips  []string
			}{{"ipBlocks", s.IpBlocks}, {"notIpBlocks", s.NotIpBlocks}, {"remoteIpBlocks", s.RemoteIpBlocks}, {"notRemoteIpBlocks", s.NotRemoteIpBlocks}} {
				for k, ip := range list.ips {
					v.ipOrCIDR(idx(join(join(fp, "source"), list.name), k), ip)
				}
			}
		}
		for j, t := range r.To {
			tp := idx(join(rp, "to"), j)
			if t.GetOperation() == nil {
				v.errf(join(tp, "operation"), "is required")
				continue
			}
			op := join(tp, "operation")
			for k, p := range t.Operation.Ports {
				v.portString(idx(join(op, "ports"), k), p)
			}
			for k, p := range t.Operation.NotPorts {
				v.portString(idx(join(op, "notPorts"), k), p)
			}
			for k, m := range t.Operation.Methods {
				if m == "" {
					v.errf(idx(join(op, "methods"), k), "must not be empty")
				}
			}
			for k, p := range t.Operation.Paths {
				if p == "" {
					v.errf(idx(join(op, "paths"), k), "must not be empty")
				}
			}
		}
		for j, c := range r.When {
			cp := idx(join(rp, "when"), j)
			if c.Key == "" {
				v.errf(join(cp, "key"), "is required")
			}
			if len(c.Values) == 0 && len(c.NotValues) == 0 {
				v.errf(cp, "needs values or notValues")
			}
		}
	}
}
