// Package rootcert distributes the mesh root certificate: the ConfigMap istio-ca-root-cert (key root-cert.pem)
// in every selected namespace of a cluster, which workloads mount to verify the control plane and each other,
// and, in file mode, a file at a path.
package rootcert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshd/meshd/pkg/ca"
)

// Istio's names.
const (
	ConfigMapName = "istio-ca-root-cert"
	DataKey       = "root-cert.pem"
	// ConfigLabel marks the ConfigMap as Istio's, as istiod does.
	ConfigLabel = "istio.io/config"
)

// DefaultExcludedNamespaces are Kubernetes' own namespaces, which istiod leaves alone.
var DefaultExcludedNamespaces = []string{"kube-system", "kube-public", "kube-node-lease", "local-path-storage"}

// NamespaceFilter selects the namespaces that get the ConfigMap (meshd's discoverySelectors filter is one).
type NamespaceFilter interface {
	Selected(namespace string) bool
	// Subscribe calls fn when namespaces enter or leave the selection; cancel stops that.
	Subscribe(fn func(added, removed []string)) (cancel func())
}

// Options configure a Controller.
type Options struct {
	// Filter selects the namespaces; nil selects every namespace.
	Filter NamespaceFilter
	// ExcludedNamespaces never get the ConfigMap; nil means DefaultExcludedNamespaces.
	ExcludedNamespaces []string
	// Workers reconciling namespaces in parallel, 2 when zero.
	Workers int
	Logger  *slog.Logger
}

// Controller keeps the ConfigMap istio-ca-root-cert present and current in every selected namespace: it
// creates it in new namespaces, recreates it when deleted and puts the root back when edited. Only the elected
// leader should run it.
type Controller struct {
	client kubernetes.Interface
	root   func() []byte
	opts   Options
	log    *slog.Logger

	mu  sync.Mutex
	run *term // the running term, nil when not running
}

// term is the state of one Run: informers and the queue live as long as the leadership that started them.
type term struct {
	queue workqueue.TypedRateLimitingInterface[string]
	ns    corelisters.NamespaceLister
	cms   corelisters.ConfigMapLister
}

// New returns a controller distributing root() (the PEM of the mesh roots, e.g. (*ca.CA).RootPEM).
func New(client kubernetes.Interface, root func() []byte, opts Options) (*Controller, error) {
	if client == nil || root == nil {
		return nil, errors.New("root certificate controller: a Kubernetes client and a root source are required")
	}
	if opts.ExcludedNamespaces == nil {
		opts.ExcludedNamespaces = DefaultExcludedNamespaces
	}
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Controller{client: client, root: root, opts: opts,
		log: opts.Logger.With("component", "rootcert", "configmap", ConfigMapName)}, nil
}

// Run reconciles until stop is closed; it matches leaderelection's AddRunFunction and may run again after it
// returns (a new term of leadership).
func (c *Controller) Run(stop <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()

	nsFactory := informers.NewSharedInformerFactory(c.client, 0)
	cmFactory := informers.NewSharedInformerFactoryWithOptions(c.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", ConfigMapName).String()
	}))
	nsInf := nsFactory.Core().V1().Namespaces()
	cmInf := cmFactory.Core().V1().ConfigMaps()
	t := &term{
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "rootcert"}),
		ns:  nsInf.Lister(),
		cms: cmInf.Lister(),
	}
	defer t.queue.ShutDown()

	onNamespace := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok && ns.Status.Phase != corev1.NamespaceTerminating {
			c.enqueue(t, ns.Name)
		}
	}
	onConfigMap := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		if cm, ok := obj.(*corev1.ConfigMap); ok && cm.Name == ConfigMapName {
			c.enqueue(t, cm.Namespace)
		}
	}
	if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onNamespace,
		UpdateFunc: func(_, obj any) { onNamespace(obj) },
	}); err != nil {
		c.log.Error("root certificate controller not started", "error", err)
		return
	}
	if _, err := cmInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onConfigMap,
		UpdateFunc: func(_, obj any) { onConfigMap(obj) },
		DeleteFunc: onConfigMap,
	}); err != nil {
		c.log.Error("root certificate controller not started", "error", err)
		return
	}
	if c.opts.Filter != nil {
		unsubscribe := c.opts.Filter.Subscribe(func(added, _ []string) {
			for _, ns := range added {
				c.enqueue(t, ns)
			}
		})
		defer unsubscribe()
	}
	nsFactory.Start(ctx.Done())
	cmFactory.Start(ctx.Done())
	defer func() {
		cancel() // the informers stop with ctx; Shutdown waits for them
		nsFactory.Shutdown()
		cmFactory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), nsInf.Informer().HasSynced, cmInf.Informer().HasSynced) {
		return
	}
	c.mu.Lock()
	c.run = t
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.run = nil
		c.mu.Unlock()
	}()
	c.log.Info("root certificate distribution started")

	var wg sync.WaitGroup
	for range c.opts.Workers {
		wg.Go(func() {
			for c.processNext(ctx, t) {
			}
		})
	}
	<-ctx.Done()
	t.queue.ShutDown()
	wg.Wait()
	c.log.Info("root certificate distribution stopped")
}

// RootChanged has every namespace checked again, after the roots changed.
func (c *Controller) RootChanged() {
	c.mu.Lock()
	t := c.run
	c.mu.Unlock()
	if t == nil {
		return
	}
	namespaces, err := t.ns.List(labels.Everything())
	if err != nil {
		return
	}
	for _, ns := range namespaces {
		c.enqueue(t, ns.Name)
	}
}

func (c *Controller) enqueue(t *term, ns string) {
	if c.wanted(ns) {
		t.queue.Add(ns)
	}
}

func (c *Controller) wanted(ns string) bool {
	return !slices.Contains(c.opts.ExcludedNamespaces, ns) && (c.opts.Filter == nil || c.opts.Filter.Selected(ns))
}

func (c *Controller) processNext(ctx context.Context, t *term) bool {
	ns, shutdown := t.queue.Get()
	if shutdown {
		return false
	}
	defer t.queue.Done(ns)
	if err := c.reconcile(ctx, t, ns); err != nil && ctx.Err() == nil {
		c.log.Warn("cannot update the root certificate ConfigMap; retrying", "namespace", ns, "error", err,
			"retries", t.queue.NumRequeues(ns))
		t.queue.AddRateLimited(ns)
		return true
	}
	t.queue.Forget(ns)
	return true
}

// reconcile makes the ConfigMap of namespace ns hold the current roots.
func (c *Controller) reconcile(ctx context.Context, t *term, ns string) error {
	if !c.wanted(ns) {
		return nil
	}
	namespace, err := t.ns.Get(ns)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if namespace.Status.Phase == corev1.NamespaceTerminating || namespace.DeletionTimestamp != nil {
		return nil
	}
	root := c.root()
	if len(root) == 0 {
		return errors.New("no root certificate to distribute")
	}
	cms := c.client.CoreV1().ConfigMaps(ns)
	cm, err := t.cms.ConfigMaps(ns).Get(ConfigMapName)
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: ns, Labels: map[string]string{ConfigLabel: "true"}},
			Data:       map[string]string{DataKey: string(root)},
		}, metav1.CreateOptions{})
		switch {
		case err == nil:
			c.log.Info("root certificate ConfigMap created", "namespace", ns)
			return nil
		case apierrors.IsAlreadyExists(err):
			return nil // the informer has not seen it yet; its add event brings it back here
		case apierrors.IsForbidden(err) && apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause):
			return nil
		}
		return fmt.Errorf("creating ConfigMap %s/%s: %w", ns, ConfigMapName, err)
	}
	if err != nil {
		return err
	}
	if cm.Data[DataKey] == string(root) && cm.Labels[ConfigLabel] == "true" {
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	cm.Data[DataKey] = string(root)
	cm.Labels[ConfigLabel] = "true"
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating ConfigMap %s/%s: %w", ns, ConfigMapName, err)
	}
	c.log.Info("root certificate ConfigMap updated", "namespace", ns)
	return nil
}

// WriteFile writes the roots to path (mode 0644: they are public) for file-mode workloads, unless the file
// already holds exactly them. A missing parent directory is created 0700; an existing one keeps its mode, so
// give a readable directory when other users must read the file.
func WriteFile(path string, rootPEM []byte) error {
	if len(rootPEM) == 0 {
		return fmt.Errorf("root certificate file %s: no root certificate", path)
	}
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, rootPEM) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("root certificate file %s: %w", path, err)
	}
	if err := ca.WriteFileAtomic(path, rootPEM, 0o644); err != nil {
		return fmt.Errorf("root certificate file %s: %w", path, err)
	}
	return nil
}
