// Package validation checks Istio configuration objects for what Envoy would reject or what would surprise their
// authors, in the spirit of the Istio validation webhook. Every problem of an object is reported, each with the
// path of the field it concerns.
package validation

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"

	"github.com/meshd/meshd/pkg/model"
)

// FieldError is one problem at one field of a spec.
type FieldError struct {
	// Path locates the field in the spec, e.g. "http[0].route[1].weight"; empty for the object as a whole.
	Path    string
	Message string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Message
	}
	return e.Path + ": " + e.Message
}

// Error lists every problem found in one object.
type Error struct {
	// Source is where the object came from (Config.Source), may be empty.
	Source string
	// Object names the object: "VirtualService default/reviews".
	Object string
	Fields []*FieldError
}

// Error reads "samples/x.yaml: VirtualService default/reviews: http[0].route[1]: weight must be >= 0", with
// further problems joined by "; ".
func (e *Error) Error() string {
	var b strings.Builder
	if e.Source != "" {
		b.WriteString(e.Source)
		b.WriteString(": ")
	}
	b.WriteString(e.Object)
	b.WriteString(": ")
	for i, f := range e.Fields {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.Error())
	}
	return b.String()
}

// Unwrap returns the individual problems, so the error behaves like errors.Join of them.
func (e *Error) Unwrap() []error {
	out := make([]error, len(e.Fields))
	for i, f := range e.Fields {
		out[i] = f
	}
	return out
}

// Validate checks one Istio configuration object. It returns nil or an *Error listing every problem.
func Validate(c *model.Config) error {
	v := &validator{}
	if c.Name == "" {
		v.errf("metadata.name", "is required")
	}
	switch c.Kind {
	case model.KindVirtualService:
		if s, ok := c.Spec.(*networking.VirtualService); v.specType(ok, c) {
			v.virtualService(s)
		}
	case model.KindDestinationRule:
		if s, ok := c.Spec.(*networking.DestinationRule); v.specType(ok, c) {
			v.destinationRule(s)
		}
	case model.KindGateway:
		if s, ok := c.Spec.(*networking.Gateway); v.specType(ok, c) {
			v.gateway(s)
		}
	case model.KindServiceEntry:
		if s, ok := c.Spec.(*networking.ServiceEntry); v.specType(ok, c) {
			v.serviceEntry(s)
		}
	case model.KindWorkloadEntry:
		if s, ok := c.Spec.(*networking.WorkloadEntry); v.specType(ok, c) {
			v.workloadEntry("", s, nil, true)
		}
	case model.KindSidecar:
		if s, ok := c.Spec.(*networking.Sidecar); v.specType(ok, c) {
			v.sidecar(s)
		}
	case model.KindPeerAuthentication:
		if s, ok := c.Spec.(*security.PeerAuthentication); v.specType(ok, c) {
			v.peerAuthentication(s)
		}
	case model.KindAuthorizationPolicy:
		if s, ok := c.Spec.(*security.AuthorizationPolicy); v.specType(ok, c) {
			v.authorizationPolicy(s)
		}
	default:
		v.errf("", "kind %q is not an Istio configuration kind meshd serves", c.Kind)
	}
	if len(v.errs) == 0 {
		return nil
	}
	return &Error{Source: c.Source, Object: c.String(), Fields: v.errs}
}

type validator struct {
	errs []*FieldError
}

func (v *validator) errf(path, format string, args ...any) {
	v.errs = append(v.errs, &FieldError{Path: path, Message: fmt.Sprintf(format, args...)})
}

func (v *validator) specType(ok bool, c *model.Config) bool {
	if !ok {
		v.errf("spec", "is a %T, not a %s spec", c.Spec, c.Kind)
	}
	return ok
}

// join builds a field path: join("http[0]", "route") is "http[0].route".
func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func idx(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func key(path, k string) string { return path + "[" + k + "]" }

var (
	dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// isDNSLabel reports whether s is an RFC 1123 label: what Kubernetes names and Istio subset names must be.
func isDNSLabel(s string) bool { return len(s) <= 63 && dns1123Label.MatchString(s) }

// isDNSName reports whether s is a dot-separated list of RFC 1123 labels.
func isDNSName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}

// hostProblem explains why h is not a host Istio accepts, or returns "": a DNS name, "*.suffix", "*" when
// allowed, or an IP address.
func hostProblem(h string, allowStar bool) string {
	switch {
	case h == "":
		return "host must not be empty"
	case h == "*":
		if !allowStar {
			return `host "*" is not allowed here`
		}
		return ""
	case strings.HasPrefix(h, "*."):
		if !isDNSName(h[2:]) {
			return fmt.Sprintf("%q is not a valid wildcard host (want *.<DNS name>)", h)
		}
		return ""
	case strings.Contains(h, "*"):
		return fmt.Sprintf("%q: a wildcard is only allowed as the whole first label (*.example.com)", h)
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return ""
	}
	if !isDNSName(h) {
		return fmt.Sprintf("%q is not a valid DNS name (lowercase letters, digits, '-' and '.')", h)
	}
	return ""
}

func (v *validator) host(path, h string, allowStar bool) {
	if p := hostProblem(h, allowStar); p != "" {
		v.errf(path, "%s", p)
	}
}

func (v *validator) port(path string, n uint32) {
	if n < 1 || n > 65535 {
		v.errf(path, "port number %d must be in 1..65535", n)
	}
}

// duration checks a duration is valid and at least 1ms, the smallest Envoy timeout Istio accepts.
func (v *validator) duration(path string, d *durationpb.Duration) {
	if d == nil {
		return
	}
	if err := d.CheckValid(); err != nil {
		v.errf(path, "invalid duration: %v", err)
		return
	}
	if d.AsDuration() < time.Millisecond {
		v.errf(path, "duration %s must be at least 1ms", d.AsDuration())
	}
}

func (v *validator) percent(path string, p float64) {
	if p < 0 || p > 100 {
		v.errf(path, "percentage %v must be in 0..100", p)
	}
}

func (v *validator) nonNegative(path string, n int32) {
	if n < 0 {
		v.errf(path, "must be >= 0, got %d", n)
	}
}

func (v *validator) enum(path string, e protoreflect.Enum) {
	if e.Descriptor().Values().ByNumber(e.Number()) == nil {
		v.errf(path, "unknown value %d", e.Number())
	}
}

// ipOrCIDR checks an address is an IP or a CIDR prefix.
func (v *validator) ipOrCIDR(path, s string) {
	if _, err := netip.ParseAddr(s); err == nil {
		return
	}
	if _, err := netip.ParsePrefix(s); err == nil {
		return
	}
	v.errf(path, "%q is not an IP address or CIDR", s)
}

// labels checks label maps used as selectors: keys are non-empty, neither side has wildcards.
func (v *validator) labels(path string, m map[string]string) {
	for _, k := range model.SortedKeys(m) {
		switch {
		case k == "":
			v.errf(path, "label key must not be empty")
		case strings.Contains(k, "*"):
			v.errf(key(path, k), "wildcards are not allowed in label keys")
		case strings.Contains(m[k], "*"):
			v.errf(key(path, k), "wildcards are not allowed in label values")
		case len(m[k]) > 63:
			v.errf(key(path, k), "label value is longer than 63 characters")
		}
	}
}

// exportTo checks namespaces a resource is exported to: ".", "*", "~" or namespace names.
func (v *validator) exportTo(path string, list []string) {
	for i, e := range list {
		switch {
		case e == "." || e == "*" || e == "~":
			if e == "~" && len(list) > 1 {
				v.errf(idx(path, i), `"~" (export to none) cannot be combined with other entries`)
			}
		case !isDNSLabel(e):
			v.errf(idx(path, i), "%q is not a namespace name, \".\", \"*\" or \"~\"", e)
		}
	}
}

func (v *validator) regex(path, re string) {
	if _, err := regexp.Compile(re); err != nil {
		v.errf(path, "regex %q does not compile (RE2): %v", re, err)
	}
}

// protocol checks a protocol name in a port definition: empty (detected) or one Istio knows.
func (v *validator) protocol(path, p string) {
	if p != "" && model.ParseProtocol(p) == model.ProtocolUnsupported {
		v.errf(path, "unknown protocol %q", p)
	}
}
