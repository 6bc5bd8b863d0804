package authn

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DefaultAudience is the audience a workload's token must be issued for (Istio's istio-ca).
const DefaultAudience = "istio-ca"

// serviceAccountPrefix starts the user name Kubernetes gives a service-account token.
const serviceAccountPrefix = "system:serviceaccount:"

// KubeJWTOptions configure a KubeJWT authenticator.
type KubeJWTOptions struct {
	// Client makes the TokenReviews; it needs create on tokenreviews.authentication.k8s.io.
	Client kubernetes.Interface
	// TrustDomain of the identities, cluster.local when empty.
	TrustDomain string
	// Audiences the token must be valid for (any one of them); [istio-ca] when empty.
	Audiences []string
	// Timeout of one TokenReview, 10s when zero.
	Timeout time.Duration
}

// KubeJWT authenticates the "authorization: Bearer <token>" of a call with a Kubernetes TokenReview: the token
// must be a service-account token for one of the audiences; the caller is that service account.
type KubeJWT struct {
	opts KubeJWTOptions
}

// NewKubeJWT returns a token authenticator.
func NewKubeJWT(opts KubeJWTOptions) (*KubeJWT, error) {
	if opts.Client == nil {
		return nil, errors.New("token authenticator: no Kubernetes client")
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	if len(opts.Audiences) == 0 {
		opts.Audiences = []string{DefaultAudience}
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	opts.Audiences = slices.Clone(opts.Audiences)
	return &KubeJWT{opts: opts}, nil
}

// Method implements Authenticator.
func (a *KubeJWT) Method() string { return MethodToken }

// Authenticate implements Authenticator.
func (a *KubeJWT) Authenticate(ctx context.Context) (*Caller, error) {
	token, err := BearerToken(ctx)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, a.opts.Timeout)
	defer cancel()
	review, err := a.opts.Client.AuthenticationV1().TokenReviews().Create(rctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: a.opts.Audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		if apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("%w: token: the control plane may not create TokenReviews: %v", ErrUnavailable, err)
		}
		return nil, fmt.Errorf("%w: token: TokenReview failed: %v", ErrUnavailable, err)
	}
	st := review.Status
	if st.Error != "" && !st.Authenticated {
		return nil, fmt.Errorf("token rejected by the API server: %s", st.Error)
	}
	if !st.Authenticated {
		return nil, errors.New("token rejected by the API server (not authenticated)")
	}
	if !slices.ContainsFunc(st.Audiences, func(aud string) bool { return slices.Contains(a.opts.Audiences, aud) }) {
		return nil, fmt.Errorf("token is valid for audiences %v, none of the required %v", st.Audiences, a.opts.Audiences)
	}
	ns, sa, err := serviceAccountOf(st.User.Username)
	if err != nil {
		return nil, err
	}
	return &Caller{Identity: SPIFFEID(a.opts.TrustDomain, ns, sa), Method: MethodToken}, nil
}

// serviceAccountOf reads system:serviceaccount:<namespace>:<name>.
func serviceAccountOf(user string) (namespace, name string, err error) {
	rest, ok := strings.CutPrefix(user, serviceAccountPrefix)
	parts := strings.Split(rest, ":")
	if !ok || len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return "", "", fmt.Errorf("token belongs to user %q, not to a service account", user)
	}
	return parts[0], parts[1], nil
}

// BearerToken reads the token of the call's "authorization: Bearer <token>" metadata; an error wrapping
// ErrNoCredentials when there is none.
func BearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	if len(values) == 0 {
		return "", fmt.Errorf("%w: no authorization header", ErrNoCredentials)
	}
	if len(values) > 1 {
		return "", errors.New("token: more than one authorization header")
	}
	scheme, token, found := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", errors.New("token: the authorization header is not \"Bearer <token>\"")
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", errors.New("token: the authorization header has an empty token")
	}
	return token, nil
}
