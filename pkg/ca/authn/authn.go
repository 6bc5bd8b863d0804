// Package authn tells who is calling the CA (or any gRPC service of the control plane): a Kubernetes
// service-account token checked with a TokenReview, or a client certificate chained to the mesh root. Either way
// the result is a SPIFFE identity, spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
package authn

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Caller is an authenticated caller.
type Caller struct {
	// Identity is the caller's SPIFFE ID.
	Identity string
	// Method is how it was authenticated: MethodToken or MethodClientCertificate.
	Method string
}

// Authentication methods.
const (
	MethodToken             = "kubernetes-token"
	MethodClientCertificate = "client-certificate"
)

// Authenticator finds the caller of a gRPC call from its context (incoming metadata, TLS peer).
type Authenticator interface {
	// Authenticate returns the caller, or an error wrapping ErrNoCredentials when the call carries no
	// credentials of this kind, ErrUnavailable when they could not be checked, or another error when they are
	// invalid. Errors never quote a credential.
	Authenticate(ctx context.Context) (*Caller, error)
	// Method names the kind of credentials it checks.
	Method() string
}

var (
	// ErrNoCredentials: the call carries no credentials the authenticator checks.
	ErrNoCredentials = errors.New("no credentials")
	// ErrUnavailable: the credentials could not be checked (the API server did not answer); try again.
	ErrUnavailable = errors.New("authentication unavailable")
)

// Chain tries its authenticators in order and returns the first caller one of them authenticates. A call
// with invalid credentials of one kind is refused even when it has none of another; the error then names every
// reason.
type Chain []Authenticator

// Authenticate implements Authenticator.
func (c Chain) Authenticate(ctx context.Context) (*Caller, error) {
	var errs []error
	for _, a := range c {
		caller, err := a.Authenticate(ctx)
		if err == nil {
			return caller, nil
		}
		if !errors.Is(err, ErrNoCredentials) {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		methods := make([]string, len(c))
		for i, a := range c {
			methods[i] = a.Method()
		}
		return nil, fmt.Errorf("%w: the call has none of: %s", ErrNoCredentials, strings.Join(methods, ", "))
	}
	return nil, errors.Join(errs...)
}

// Method implements Authenticator.
func (c Chain) Method() string {
	methods := make([]string, len(c))
	for i, a := range c {
		methods[i] = a.Method()
	}
	return strings.Join(methods, "|")
}

// SPIFFEID is the identity of a Kubernetes service account.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

// ParseSPIFFEID splits an identity of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
func ParseSPIFFEID(id string) (trustDomain, namespace, serviceAccount string, err error) {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return "", "", "", fmt.Errorf("identity %q is not a spiffe:// URI", id)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 5 || parts[0] == "" || parts[1] != "ns" || parts[2] == "" || parts[3] != "sa" || parts[4] == "" {
		return "", "", "", fmt.Errorf("identity %q is not of the form spiffe://<trust domain>/ns/<namespace>/sa/<service account>", id)
	}
	return parts[0], parts[2], parts[4], nil
}
