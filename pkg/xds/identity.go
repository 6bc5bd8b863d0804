package xds

import (
	"context"
	"fmt"

	"github.com/meshd/meshd/pkg/model"
)

// Caller is the authenticated identity of a stream (from an mTLS certificate or a token), set by the secure
// port's interceptor. Streams without one (the plaintext port) are not identity-checked.
type Caller struct {
	Namespace      string
	ServiceAccount string
	// Identity is the SPIFFE id, for messages.
	Identity string
}

type callerKey struct{}

// WithCaller returns a context carrying the authenticated caller.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the authenticated caller of a stream, if any.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// authorize checks that an authenticated caller asks for config only as itself: the proxy's namespace must be
// the caller's, and its service account (from metadata, and from the registry's workload when the proxy is
// known) must be the caller's. Otherwise one workload could read another's config.
func authorize(c Caller, p *model.Proxy, push *model.PushContext) error {
	if p.Namespace != c.Namespace {
		return fmt.Errorf("%s may not request config for namespace %q", c.Identity, p.Namespace)
	}
	if sa := p.Metadata.ServiceAccount; sa != "" && sa != c.ServiceAccount {
		return fmt.Errorf("%s may not request config as service account %q", c.Identity, sa)
	}
	if push != nil {
		if w := push.WorkloadForProxy(p); w != nil && w.ServiceAccount != "" && w.ServiceAccount != c.ServiceAccount {
			return fmt.Errorf("%s may not request config as workload %s (service account %q)", c.Identity, w.Key(), w.ServiceAccount)
		}
	}
	return nil
}
