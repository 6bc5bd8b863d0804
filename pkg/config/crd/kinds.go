package crd

import (
	"context"
	"time"

	"istio.io/client-go/pkg/clientset/versioned"
	netv1 "istio.io/client-go/pkg/informers/externalversions/networking/v1"
	netv1alpha3 "istio.io/client-go/pkg/informers/externalversions/networking/v1alpha3"
	netv1beta1 "istio.io/client-go/pkg/informers/externalversions/networking/v1beta1"
	secv1 "istio.io/client-go/pkg/informers/externalversions/security/v1"
	secv1beta1 "istio.io/client-go/pkg/informers/externalversions/security/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"

	"github.com/meshd/meshd/pkg/model"
)

// Istio API groups.
const (
	GroupNetworking = "networking.istio.io"
	GroupSecurity   = "security.istio.io"
)

// kindInfo describes one Istio kind and the versions it may be served at, preferred first.
type kindInfo struct {
	kind     model.Kind
	group    string
	resource string // the plural, as in the CRD name "<resource>.<group>"
	versions []version
}

// crdName is the name of the CustomResourceDefinition of the kind.
func (k *kindInfo) crdName() string { return k.resource + "." + k.group }

type version struct {
	name string
	// informer returns a new informer over every namespace, indexed by namespace.
	informer func(c versioned.Interface) cache.SharedIndexInformer
	// list lists one namespace.
	list func(ctx context.Context, c versioned.Interface, ns string) (runtime.Object, error)
}

// newInformer adapts a generated informer constructor.
type newInformer func(versioned.Interface, string, time.Duration, cache.Indexers) cache.SharedIndexInformer

// lister returns the List method of a typed client for one namespace.
type lister func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error)

func ver(name string, inf newInformer, list lister) version {
	return version{
		name: name,
		informer: func(c versioned.Interface) cache.SharedIndexInformer {
			return inf(c, metav1.NamespaceAll, 0, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
		},
		list: func(ctx context.Context, c versioned.Interface, ns string) (runtime.Object, error) {
			return list(c, ns)(ctx, metav1.ListOptions{})
		},
	}
}

// kinds are the Istio kinds meshd serves. networking.istio.io v1 and v1beta1 alias the v1alpha3 messages, and
// security.istio.io v1 the v1beta1 ones, so every version converts to the same spec type.
var kinds = []*kindInfo{
	{model.KindVirtualService, GroupNetworking, "virtualservices", []version{
		ver("v1", netv1.NewVirtualServiceInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1().VirtualServices(ns).List)
		}),
		ver("v1beta1", netv1beta1.NewVirtualServiceInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1beta1().VirtualServices(ns).List)
		}),
		ver("v1alpha3", netv1alpha3.NewVirtualServiceInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1alpha3().VirtualServices(ns).List)
		}),
	}},
	{model.KindDestinationRule, GroupNetworking, "destinationrules", []version{
		ver("v1", netv1.NewDestinationRuleInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1().DestinationRules(ns).List)
		}),
		ver("v1beta1", netv1beta1.NewDestinationRuleInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1beta1().DestinationRules(ns).List)
		}),
		ver("v1alpha3", netv1alpha3.NewDestinationRuleInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1alpha3().DestinationRules(ns).List)
		}),
	}},
	{model.KindGateway, GroupNetworking, "gateways", []version{
		ver("v1", netv1.NewGatewayInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1().Gateways(ns).List)
		}),
		ver("v1beta1", netv1beta1.NewGatewayInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1beta1().Gateways(ns).List)
		}),
		ver("v1alpha3", netv1alpha3.NewGatewayInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1alpha3().Gateways(ns).List)
		}),
	}},
	{model.KindServiceEntry, GroupNetworking, "serviceentries", []version{
		ver("v1", netv1.NewServiceEntryInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1().ServiceEntries(ns).List)
		}),
		ver("v1beta1", netv1beta1.NewServiceEntryInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1beta1().ServiceEntries(ns).List)
		}),
		ver("v1alpha3", netv1alpha3.NewServiceEntryInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1alpha3().ServiceEntries(ns).List)
		}),
	}},
	{model.KindWorkloadEntry, GroupNetworking, "workloadentries", []version{
		ver("v1", netv1.NewWorkloadEntryInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1().WorkloadEntries(ns).List)
		}),
		ver("v1beta1", netv1beta1.NewWorkloadEntryInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1beta1().WorkloadEntries(ns).List)
		}),
		ver("v1alpha3", netv1alpha3.NewWorkloadEntryInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1alpha3().WorkloadEntries(ns).List)
		}),
	}},
	{model.KindSidecar, GroupNetworking, "sidecars", []version{
		ver("v1", netv1.NewSidecarInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1().Sidecars(ns).List)
		}),
		ver("v1beta1", netv1beta1.NewSidecarInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1beta1().Sidecars(ns).List)
		}),
		ver("v1alpha3", netv1alpha3.NewSidecarInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.NetworkingV1alpha3().Sidecars(ns).List)
		}),
	}},
	{model.KindPeerAuthentication, GroupSecurity, "peerauthentications", []version{
		ver("v1", secv1.NewPeerAuthenticationInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.SecurityV1().PeerAuthentications(ns).List)
		}),
		ver("v1beta1", secv1beta1.NewPeerAuthenticationInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.SecurityV1beta1().PeerAuthentications(ns).List)
		}),
	}},
	{model.KindAuthorizationPolicy, GroupSecurity, "authorizationpolicies", []version{
		ver("v1", secv1.NewAuthorizationPolicyInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.SecurityV1().AuthorizationPolicies(ns).List)
		}),
		ver("v1beta1", secv1beta1.NewAuthorizationPolicyInformer, func(c versioned.Interface, ns string) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			return wrap(c.SecurityV1beta1().AuthorizationPolicies(ns).List)
		}),
	}},
}

// wrap turns a typed List method into one returning runtime.Object.
func wrap[L runtime.Object](list func(context.Context, metav1.ListOptions) (L, error)) func(context.Context, metav1.ListOptions) (runtime.Object, error) {
	return func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
		l, err := list(ctx, opts)
		if err != nil {
			return nil, err
		}
		return l, nil
	}
}

func kindInfoOf(k model.Kind) *kindInfo {
	for _, ki := range kinds {
		if ki.kind == k {
			return ki
		}
	}
	return nil
}
