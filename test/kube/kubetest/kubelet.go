package kubetest

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Node is the node a FakeKubelet registers. Zero fields take the defaults.
type Node struct {
	Name    string // default "node-1"
	Region  string // label topology.kubernetes.io/region, default "region-1"
	Zone    string // label topology.kubernetes.io/zone, default "zone-1"
	PodCIDR string // pod IPs are taken from it, default "10.244.0.0/16"; give each node its own
	HostIP  string // the node's InternalIP and the pods' hostIP, default "127.0.0.1"
}

// FakeKubelet is the scheduler and the kubelet of one node, as far as the API
// shows them: it registers a Ready Node, binds every pod that has no node yet
// to it (pods/binding), and reports each pod bound to it as Running and Ready
// with a pod IP from PodCIDR, so that the real endpointslice controller writes
// EndpointSlices. A pod that is deleted gracefully is removed at once, as a
// kubelet does once its containers are gone. Pods bound to another node name
// are left alone, and so is a pod's status once it is Running: tests may
// change it (say, Ready=False) without the fake kubelet reverting it.
type FakeKubelet struct {
	node   Node
	prefix netip.Prefix
	client kubernetes.Interface
	pods   corelisters.PodLister
	queue  workqueue.TypedRateLimitingInterface[string]
	logf   func(string, ...any)
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once

	mu  sync.Mutex
	ips map[string]podIP  // by pod key
	use map[uint32]string // host offset in prefix -> pod key
}

type podIP struct {
	uid  types.UID
	addr netip.Addr
}

// StartFakeKubelet registers node and runs a FakeKubelet for it until Stop or
// the end of t.
func (c *Cluster) StartFakeKubelet(t testing.TB, node Node) *FakeKubelet {
	t.Helper()
	k, err := StartFakeKubelet(c.Clientset, node, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	return k
}

// StartFakeKubelet registers node with client and runs a FakeKubelet for it
// until Stop. logf (may be nil) receives errors it will retry.
func StartFakeKubelet(client kubernetes.Interface, node Node, logf func(string, ...any)) (*FakeKubelet, error) {
	node = withDefaults(node)
	prefix, err := netip.ParsePrefix(node.PodCIDR)
	if err != nil || !prefix.Addr().Is4() || prefix.Bits() > 30 {
		return nil, fmt.Errorf("kubetest: node %s: pod CIDR %q: want an IPv4 prefix of /30 or larger", node.Name, node.PodCIDR)
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &FakeKubelet{
		node:   node,
		prefix: prefix.Masked(),
		client: client,
		queue:  workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		logf:   logf,
		cancel: cancel,
		ips:    map[string]podIP{},
		use:    map[uint32]string{},
	}
	if err := k.registerNode(ctx); err != nil {
		cancel()
		return nil, err
	}

	factory := informers.NewSharedInformerFactory(client, 0)
	informer := factory.Core().V1().Pods()
	k.pods = informer.Lister()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		cancel()
		return nil, err
	}
	factory.Start(ctx.Done())
	k.wg.Go(func() {
		factory.Shutdown() // waits for the informer once ctx is done
	})
	syncCtx, syncCancel := context.WithTimeout(ctx, 30*time.Second)
	defer syncCancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), informer.Informer().HasSynced) {
		k.Stop()
		return nil, fmt.Errorf("kubetest: fake kubelet %s: pod informer did not sync", node.Name)
	}
	k.wg.Go(func() {
		for k.processNext(ctx) {
		}
	})
	return k, nil
}

func withDefaults(n Node) Node {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&n.Name, "node-1")
	def(&n.Region, "region-1")
	def(&n.Zone, "zone-1")
	def(&n.PodCIDR, "10.244.0.0/16")
	def(&n.HostIP, "127.0.0.1")
	return n
}

// NodeName returns the name of the node.
func (k *FakeKubelet) NodeName() string { return k.node.Name }

// Stop stops the fake kubelet and waits for it. The Node and the pods stay.
func (k *FakeKubelet) Stop() {
	k.once.Do(func() {
		k.cancel()
		k.queue.ShutDown()
		k.wg.Wait()
	})
}

func (k *FakeKubelet) registerNode(ctx context.Context) error {
	n := k.node
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{
			corev1.LabelHostname:       n.Name,
			corev1.LabelTopologyRegion: n.Region,
			corev1.LabelTopologyZone:   n.Zone,
			corev1.LabelOSStable:       "linux",
			corev1.LabelArchStable:     "amd64",
		}},
		Spec: corev1.NodeSpec{PodCIDR: k.prefix.String(), PodCIDRs: []string{k.prefix.String()}},
	}
	created, err := k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = k.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	}
	if err != nil {
		return fmt.Errorf("kubetest: registering node %s: %w", n.Name, err)
	}
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("32Gi"),
		corev1.ResourcePods:   resource.MustParse("250"),
	}
	created.Status = corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "kubetest fake kubelet", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.HostIP},
			{Type: corev1.NodeHostName, Address: n.Name},
		},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion: "kubetest", OperatingSystem: "linux", Architecture: "amd64",
			ContainerRuntimeVersion: "kubetest://1",
		},
	}
	if _, err := k.client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("kubetest: node %s status: %w", n.Name, err)
	}
	return nil
}

func (k *FakeKubelet) processNext(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	if err := k.sync(ctx, key); err != nil && ctx.Err() == nil {
		if !apierrors.IsConflict(err) {
			k.logf("kubetest: fake kubelet %s: pod %s: %v (retrying)", k.node.Name, key, err)
		}
		k.queue.AddRateLimited(key)
		return true
	}
	k.queue.Forget(key)
	return true
}

func (k *FakeKubelet) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := k.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		k.release(key)
		return nil
	} else if err != nil {
		return err
	}
	pods := k.client.CoreV1().Pods(ns)
	switch {
	case pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil:
		// The scheduler's part.
		err := pods.Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: name, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: k.node.Name},
		}, metav1.CreateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err

	case pod.Spec.NodeName != k.node.Name:
		return nil

	case pod.DeletionTimestamp != nil:
		// Graceful deletion waits for the kubelet: the containers are gone, so
		// finish it, for this pod and not a later one of the same name.
		zero := int64(0)
		err := pods.Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err

	case pod.Status.Phase != corev1.PodPending && pod.Status.Phase != "":
		// Started already: keep its IP (after a restart of the fake kubelet).
		k.claim(key, pod.UID, pod.Status.PodIP)
		return nil

	default:
		ip, err := k.allocate(key, pod.UID)
		if err != nil {
			return err
		}
		pod = pod.DeepCopy()
		pod.Status = runningStatus(pod, ip.String(), k.node.HostIP)
		_, err = pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
}

// runningStatus is the status a kubelet reports once every container of pod
// has started and is ready.
func runningStatus(pod *corev1.Pod, podIP, hostIP string) corev1.PodStatus {
	now := metav1.Now()
	st := *pod.Status.DeepCopy()
	st.Phase = corev1.PodRunning
	st.Reason, st.Message = "", ""
	st.HostIP, st.HostIPs = hostIP, []corev1.HostIP{{IP: hostIP}}
	st.PodIP, st.PodIPs = podIP, []corev1.PodIP{{IP: podIP}}
	st.StartTime = &now
	st.Conditions = nil
	for _, t := range []corev1.PodConditionType{corev1.PodReadyToStartContainers, corev1.PodInitialized,
		corev1.ContainersReady, corev1.PodReady, corev1.PodScheduled} {
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	running := func(c corev1.Container) corev1.ContainerStatus {
		started := true
		return corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "kubetest://" + c.Image,
			ContainerID: fmt.Sprintf("kubetest://%s-%s", pod.UID, c.Name),
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			Ready:       true, Started: &started,
		}
	}
	st.InitContainerStatuses, st.ContainerStatuses = nil, nil
	for _, c := range pod.Spec.InitContainers {
		s := running(c)
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			// An ordinary init container ran to completion; sidecars keep running.
			started := false
			s.Ready, s.Started = true, &started
			s.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				Reason: "Completed", StartedAt: now, FinishedAt: now, ContainerID: s.ContainerID,
			}}
		}
		st.InitContainerStatuses = append(st.InitContainerStatuses, s)
	}
	for _, c := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, running(c))
	}
	return st
}

// allocate returns the pod's IP, taking the lowest free one in the node's
// prefix (skipping the network address, .1 and the last one) the first time.
func (k *FakeKubelet) allocate(key string, uid types.UID) (netip.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if ip, ok := k.ips[key]; ok {
		if ip.uid == uid {
			return ip.addr, nil
		}
		k.releaseLocked(key) // a new pod of the same name
	}
	base := binary.BigEndian.Uint32(k.prefix.Addr().AsSlice())
	size := uint32(1) << (32 - k.prefix.Bits())
	for off := uint32(2); off < size-1; off++ {
		if _, used := k.use[off]; !used {
			k.use[off] = key
			addr := netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, base+off)))
			k.ips[key] = podIP{uid: uid, addr: addr}
			return addr, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("pod CIDR %s is full", k.prefix)
}

// claim records the IP of a pod that was running before this fake kubelet started.
func (k *FakeKubelet) claim(key string, uid types.UID, ip string) {
	addr, err := netip.ParseAddr(ip)
	if err != nil || !k.prefix.Contains(addr) {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.ips[key]; ok {
		return
	}
	off := binary.BigEndian.Uint32(addr.AsSlice()) - binary.BigEndian.Uint32(k.prefix.Addr().AsSlice())
	if _, used := k.use[off]; !used {
		k.use[off] = key
		k.ips[key] = podIP{uid: uid, addr: addr}
	}
}

func (k *FakeKubelet) release(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.releaseLocked(key)
}

func (k *FakeKubelet) releaseLocked(key string) {
	ip, ok := k.ips[key]
	if !ok {
		return
	}
	delete(k.ips, key)
	off := binary.BigEndian.Uint32(ip.addr.AsSlice()) - binary.BigEndian.Uint32(k.prefix.Addr().AsSlice())
	delete(k.use, off)
}
