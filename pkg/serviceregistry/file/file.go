// Package file is a registry and config source over a directory of Kubernetes and Istio YAML, watched live.
//
// Every file is parsed on its own and keeps its last good objects: a file that cannot be read as YAML keeps its
// previous objects, and an invalid object is rejected (logged, counted in pilot_total_rejected_configs) while its
// previous good version from the same file, if any, stays in service. The same object (kind, namespace, name) in
// two files is served from the first file in lexical path order.
//
// Services come from Kubernetes Services and ServiceEntries. Endpoints of a Kubernetes Service come from its
// EndpointSlices when a file gives any (label kubernetes.io/service-name), else from the Pods and WorkloadEntries
// its selector picks. File mode assumes workloads run a sidecar: a Pod's TLS mode is "istio" unless its
// security.istio.io/tlsMode label says otherwise (so is an EndpointSlice address without a known Pod).
//
// Readers see an immutable snapshot that is swapped atomically after every change; each change that alters the
// model is reported to onChange as one push request saying what changed.
package file

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/meshd/meshd/pkg/config"
	"github.com/meshd/meshd/pkg/config/parse"
	"github.com/meshd/meshd/pkg/config/schema"
	"github.com/meshd/meshd/pkg/config/validation"
	"github.com/meshd/meshd/pkg/model"
	"github.com/meshd/meshd/pkg/serviceregistry/kube"
)

// Source serves the objects of a directory tree. It implements model.ServiceDiscovery and model.ConfigStore.
type Source struct {
	dir          string
	domainSuffix string
	onChange     func(*model.PushRequest)

	snap atomic.Pointer[snapshot]

	// mu guards the per-file state. Changes are applied by one goroutine at a time (New, then the watch loop);
	// mu lets Files read the state meanwhile.
	mu    sync.Mutex
	files map[string]*fileState
	// dups are the duplicate objects reported so far ("path|key"), so each is logged and counted once.
	dups map[string]bool

	started atomic.Bool
	watcher *fsnotify.Watcher
	watched map[string]bool // directories under watch
	done    chan struct{}
}

var (
	_ model.ServiceDiscovery = (*Source)(nil)
	_ model.ConfigStore      = (*Source)(nil)
)

type objKey struct {
	Kind      string
	Namespace string
	Name      string
}

func (k objKey) String() string {
	if k.Namespace == "" {
		return k.Kind + " " + k.Name
	}
	return k.Kind + " " + k.Namespace + "/" + k.Name
}

// object is one accepted object of a file: exactly one of the pointers is set.
type object struct {
	key    objKey
	config *model.Config
	svc    *corev1.Service
	pod    *corev1.Pod
	sa     *corev1.ServiceAccount
	ns     *corev1.Namespace
	slice  *discoveryv1.EndpointSlice
}

type fileState struct {
	hash    [sha256.Size]byte
	objects []*object
	// problems of the last read; duplicates are recomputed with every snapshot.
	problems   []string
	duplicates []string
	read       time.Time
}

// FileStatus describes one file, for debug output.
type FileStatus struct {
	Path string
	// Objects is how many objects of the file are served (including previous versions kept for rejected ones).
	Objects int
	// Errors are the problems found when the file was last read, and objects it duplicates.
	Errors []string
	// LastRead is when the file was last parsed.
	LastRead time.Time
}

// New reads dir (recursively) once and returns a source serving it; Start watches for changes. domainSuffix
// defaults to cluster.local. onChange, which may be nil, receives one request per change of the model.
func New(dir, domainSuffix string, onChange func(*model.PushRequest)) (*Source, error) {
	info, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("file source: config directory %s does not exist", dir)
	case err != nil:
		return nil, fmt.Errorf("file source: config directory %s: %w", dir, err)
	case !info.IsDir():
		return nil, fmt.Errorf("file source: %s is not a directory", dir)
	}
	if domainSuffix == "" {
		domainSuffix = kube.DefaultDomainSuffix
	}
	if onChange == nil {
		onChange = func(*model.PushRequest) {}
	}
	s := &Source{
		dir:          filepath.Clean(dir),
		domainSuffix: domainSuffix,
		onChange:     onChange,
		files:        map[string]*fileState{},
		dups:         map[string]bool{},
		watched:      map[string]bool{},
		done:         make(chan struct{}),
	}
	s.snap.Store(emptySnapshot())
	s.mu.Lock()
	s.rescanLocked()
	s.publishLocked() // the first snapshot is the baseline: nothing to report
	s.mu.Unlock()
	slog.Info("file source loaded", "dir", s.dir, "files", len(s.files), "services", len(s.Services()))
	return s, nil
}

// Start watches the directory tree in the background until ctx is done; then Done is closed. It returns once
// the watches are in place, after applying any change made since New.
func (s *Source) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("file source: already started")
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("file source %s: creating watcher: %w", s.dir, err)
	}
	s.watcher = w
	if err := w.Add(s.dir); err != nil {
		_ = w.Close()
		return fmt.Errorf("file source: watching %s: %w", s.dir, err)
	}
	s.watched[s.dir] = true
	s.update(s.rescanLocked) // also adds watches for subdirectories
	go s.loop(ctx)
	return nil
}

// Done is closed when the watch loop started by Start has stopped.
func (s *Source) Done() <-chan struct{} { return s.done }

// Services returns every service of the current snapshot.
func (s *Source) Services() []*model.Service { return s.snap.Load().disc.Services() }

// Endpoints returns the endpoints of a hostname in the current snapshot.
func (s *Source) Endpoints(hostname string) []*model.Endpoint {
	return s.snap.Load().disc.Endpoints(hostname)
}

// Workloads returns the pods and WorkloadEntries of the current snapshot.
func (s *Source) Workloads() []*model.Workload { return s.snap.Load().disc.Workloads() }

// List returns the configs of a kind in the current snapshot.
func (s *Source) List(kind model.Kind) []*model.Config { return s.snap.Load().store.List(kind) }

// Snapshot returns the current registry and config store together: a consistent view, unlike calls to the
// Source's own methods, between which a change may land.
func (s *Source) Snapshot() (*model.StaticDiscovery, *model.StaticConfigStore) {
	sn := s.snap.Load()
	return sn.disc, sn.store
}

// Files reports the state of every file read, sorted by path.
func (s *Source) Files() []FileStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]FileStatus, 0, len(s.files))
	for _, p := range model.SortedKeys(s.files) {
		st := s.files[p]
		out = append(out, FileStatus{
			Path:     p,
			Objects:  len(st.objects),
			Errors:   append(slices.Clone(st.problems), st.duplicates...),
			LastRead: st.read,
		})
	}
	return out
}

// update applies a change to the file state and, if it changed anything, publishes a new snapshot and reports
// the difference to onChange (outside the lock).
func (s *Source) update(change func() bool) {
	s.mu.Lock()
	var req *model.PushRequest
	if change() {
		req = s.publishLocked()
	}
	s.mu.Unlock()
	if req != nil {
		s.onChange(req)
	}
}

// publishLocked builds and swaps in a snapshot of the current file state, returning what changed or nil.
func (s *Source) publishLocked() *model.PushRequest {
	next, dups := s.buildSnapshot()
	prev := s.snap.Swap(next)
	// Counted once the snapshot that left the duplicates out is what readers see.
	s.reportDuplicates(dups)
	return diff(prev, next)
}

func (s *Source) loop(ctx context.Context) {
	defer close(s.done)
	defer func() { _ = s.watcher.Close() }()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-s.watcher.Events:
			if !ok {
				return
			}
			batch := []fsnotify.Event{ev}
			// Take what is already queued too: one editor save is often several events.
		drain:
			for {
				select {
				case ev, ok := <-s.watcher.Events:
					if !ok {
						break drain
					}
					batch = append(batch, ev)
				default:
					break drain
				}
			}
			s.update(func() bool { return s.handleLocked(batch) })
		case err, ok := <-s.watcher.Errors:
			if !ok {
				return
			}
			slog.Warn("file source: watch error, rereading the directory", "dir", s.dir, "error", err)
			s.update(s.rescanLocked)
		}
	}
}

// handleLocked applies a batch of file events, returning whether any file's objects changed.
func (s *Source) handleLocked(batch []fsnotify.Event) bool {
	changed := false
	seen := map[string]bool{}
	for _, ev := range batch {
		name := filepath.Clean(ev.Name)
		if seen[name] {
			continue
		}
		seen[name] = true
		base := filepath.Base(name)
		if strings.HasPrefix(base, "..") {
			// A Kubernetes ConfigMap volume swaps its "..data" link to publish new contents: reread all.
			return s.rescanLocked() || changed
		}
		if strings.HasPrefix(base, ".") {
			continue
		}
		info, err := os.Stat(name)
		switch {
		case err == nil && info.IsDir():
			// A new (or moved-in) directory: watch it and read what it already holds.
			changed = s.scanLocked(name) || changed
		case err == nil:
			if isConfigFile(name) {
				changed = s.readFileLocked(name) || changed
			}
		default:
			changed = s.forgetLocked(name) || changed
		}
	}
	return changed
}

func isConfigFile(path string) bool {
	base := filepath.Base(path)
	if strings.HasPrefix(base, ".") {
		return false
	}
	switch strings.ToLower(filepath.Ext(base)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// rescanLocked rereads the whole tree: new and changed files are read, vanished ones forgotten.
func (s *Source) rescanLocked() bool {
	changed := s.scanLocked(s.dir)
	for _, p := range model.SortedKeys(s.files) {
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			changed = s.forgetLocked(p) || changed
		}
	}
	return changed
}

// scanLocked reads every config file under root and, once watching, watches every directory.
func (s *Source) scanLocked(root string) bool {
	changed := false
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root {
				return err
			}
			slog.Warn("file source: cannot read", "path", path, "error", err)
			return nil
		}
		if d.IsDir() {
			if path != root && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			s.watchLocked(path)
			return nil
		}
		if !isConfigFile(path) {
			return nil
		}
		// Follow symlinks (ConfigMap volumes link every file): only regular files are read.
		if info, err := os.Stat(path); err != nil || !info.Mode().IsRegular() {
			return nil
		}
		changed = s.readFileLocked(path) || changed
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		slog.Warn("file source: cannot read directory", "dir", root, "error", err)
	}
	return changed
}

func (s *Source) watchLocked(dir string) {
	if s.watcher == nil || s.watched[dir] {
		return
	}
	if err := s.watcher.Add(dir); err != nil {
		slog.Warn("file source: cannot watch directory", "dir", dir, "error", err)
		return
	}
	s.watched[dir] = true
}

// forgetLocked drops a vanished path: a file, or a directory with everything under it.
func (s *Source) forgetLocked(path string) bool {
	changed := false
	prefix := path + string(filepath.Separator)
	for p := range s.files {
		if p == path || strings.HasPrefix(p, prefix) {
			delete(s.files, p)
			slog.Info("file source: file removed", "file", p)
			changed = true
		}
	}
	for d := range s.watched {
		if d != s.dir && (d == path || strings.HasPrefix(d, prefix)) {
			// The kernel drops watches of deleted directories itself; a directory moved away keeps its watch
			// unless removed here. Errors only mean it was already gone.
			_ = s.watcher.Remove(d)
			delete(s.watched, d)
		}
	}
	return changed
}

// readFileLocked parses one file and updates its accepted objects, returning whether they changed.
func (s *Source) readFileLocked(path string) bool {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s.forgetLocked(path)
	}
	st := s.files[path]
	if err != nil {
		slog.Warn("file source: cannot read file, keeping its previous objects", "file", path, "error", err)
		if st != nil {
			st.problems = []string{err.Error()}
		}
		return false
	}
	hash := sha256.Sum256(data)
	if st != nil && st.hash == hash {
		return false // a Chmod, or a Write that did not change the contents
	}
	if st == nil {
		st = &fileState{}
		s.files[path] = st
	}
	prev := make(map[objKey]*object, len(st.objects))
	for _, o := range st.objects {
		prev[o.key] = o
	}

	var accepted []*object
	var problems []string
	have := map[objKey]bool{}
	unreadable := false
	reject := func(k objKey, err error) {
		problems = append(problems, err.Error())
		config.RecordRejected(k.Kind)
		old := prev[k]
		keep := old != nil && !have[k]
		slog.Warn("file source: rejected object", "file", path, "kind", k.Kind, "name", nsName(k), "error", err,
			"keptPrevious", keep)
		if keep {
			accepted = append(accepted, old)
			have[k] = true
		}
	}
	accept := func(o *object) {
		if have[o.key] {
			reject(o.key, fmt.Errorf("%s: %s: defined twice in this file; the first one is used", path, o.key))
			return
		}
		if err := checkObject(path, o); err != nil {
			reject(o.key, err)
			return
		}
		accepted = append(accepted, o)
		have[o.key] = true
	}

	objs, errs := parse.Parse(data, path)
	for _, e := range errs {
		var pe *parse.Error
		if errors.As(e, &pe) && pe.Identified() {
			reject(objKey{Kind: pe.Kind, Namespace: pe.Namespace, Name: pe.Name}, e)
			continue
		}
		unreadable = true
		problems = append(problems, e.Error())
		kind := ""
		if pe != nil {
			kind = pe.Kind
		}
		config.RecordRejected(kind)
		slog.Warn("file source: cannot parse document, keeping the file's previous objects", "file", path, "error", e)
	}
	for _, c := range objs.Configs {
		accept(&object{key: objKey{string(c.Kind), c.Namespace, c.Name}, config: c})
	}
	for _, o := range objs.Services {
		accept(&object{key: objKey{schema.KindService, o.Namespace, o.Name}, svc: o})
	}
	for _, o := range objs.Pods {
		accept(&object{key: objKey{schema.KindPod, o.Namespace, o.Name}, pod: o})
	}
	for _, o := range objs.ServiceAccounts {
		accept(&object{key: objKey{schema.KindServiceAccount, o.Namespace, o.Name}, sa: o})
	}
	for _, o := range objs.Namespaces {
		accept(&object{key: objKey{schema.KindNamespace, "", o.Name}, ns: o})
	}
	for _, o := range objs.EndpointSlices {
		accept(&object{key: objKey{schema.KindEndpointSlice, o.Namespace, o.Name}, slice: o})
	}
	if unreadable {
		// Some document could not be read at all, so we cannot tell which object it was: keep every previous
		// object the readable documents did not replace.
		for _, o := range st.objects {
			if !have[o.key] {
				accepted = append(accepted, o)
				have[o.key] = true
			}
		}
	}
	old := st.objects
	st.hash, st.objects, st.problems, st.read = hash, accepted, problems, time.Now()
	// The same objects (pointers) in the same order mean every object was rejected and kept: nothing to publish.
	return !slices.Equal(old, accepted)
}

func nsName(k objKey) string {
	if k.Namespace == "" {
		return k.Name
	}
	return k.Namespace + "/" + k.Name
}

// checkObject validates an object before it is accepted.
func checkObject(path string, o *object) error {
	switch {
	case o.config != nil:
		return validation.Validate(o.config)
	case o.svc != nil:
		for i, p := range o.svc.Spec.Ports {
			if p.Port < 1 || p.Port > 65535 {
				return fmt.Errorf("%s: %s: spec.ports[%d].port: %d must be in 1..65535", path, o.key, i, p.Port)
			}
		}
	case o.slice != nil:
		if o.slice.Labels[kube.LabelServiceName] == "" {
			return fmt.Errorf("%s: %s: label %s is required to tie the slice to its Service", path, o.key, kube.LabelServiceName)
		}
	}
	return nil
}

// HasSynced is always true: New reads the whole directory before returning.
func (s *Source) HasSynced() bool { return true }
