// Package parse turns files of Kubernetes and Istio manifests (multi-document YAML, JSON, `kind: List`) into model
// configs and typed Kubernetes objects. It decodes and checks shape only; semantic checks are in
// pkg/config/validation.
package parse

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/pkg/config/schema"
	"github.com/meshd/meshd/pkg/model"
)

// DefaultNamespace is given to namespaced objects that do not name one, as kubectl does.
const DefaultNamespace = "default"

// Objects are the objects found in one input, by type, in input order.
type Objects struct {
	Configs         []*model.Config
	Services        []*corev1.Service
	Pods            []*corev1.Pod
	ServiceAccounts []*corev1.ServiceAccount
	Namespaces      []*corev1.Namespace
	EndpointSlices  []*discoveryv1.EndpointSlice
	// Skipped counts documents of kinds meshd does not read (Deployment, ConfigMap, ...).
	Skipped int
}

// Len is the number of objects kept.
func (o *Objects) Len() int {
	return len(o.Configs) + len(o.Services) + len(o.Pods) + len(o.ServiceAccounts) + len(o.Namespaces) + len(o.EndpointSlices)
}

// Error is a problem with one document of an input. When the document could be identified (Name is set), the
// problem concerns that object only; otherwise the document could not be read at all.
type Error struct {
	Source string
	// Document is the 1-based index of the document in the input; Item is the 1-based index in a List, or 0.
	Document int
	Item     int
	// Line is the 1-based line the document starts on (0 when unknown).
	Line int
	// Kind, Namespace and Name identify the object, as far as they could be read. Kind may be a guess from the raw
	// text of a document that is not valid YAML.
	Kind      string
	Namespace string
	Name      string
	Err       error
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Source != "" {
		b.WriteString(e.Source)
		b.WriteString(": ")
	}
	if e.Name != "" {
		b.WriteString(e.Kind)
		b.WriteByte(' ')
		if e.Namespace != "" {
			b.WriteString(e.Namespace)
			b.WriteByte('/')
		}
		b.WriteString(e.Name)
	} else {
		fmt.Fprintf(&b, "document %d", e.Document)
		if e.Item > 0 {
			fmt.Fprintf(&b, " item %d", e.Item)
		}
		if e.Line > 0 {
			fmt.Fprintf(&b, " (line %d)", e.Line)
		}
		if e.Kind != "" {
			b.WriteString(" ")
			b.WriteString(e.Kind)
		}
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Identified reports whether the error is about a known object (kind, namespace and name), rather than a
// document that could not be read.
func (e *Error) Identified() bool { return e.Kind != "" && e.Name != "" }

// Parse reads every document of data. Source names the input in errors and in Config.Source. A bad document
// yields an error and does not stop the others; documents of unknown kinds are skipped with a debug log line.
func Parse(data []byte, source string) (Objects, []error) {
	p := &parser{source: source}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		p.parseJSONStream(data)
	} else {
		for i, d := range splitYAML(data) {
			p.parseYAMLDoc(i+1, d)
		}
	}
	return p.out, p.errs
}

type parser struct {
	source string
	out    Objects
	errs   []error
}

type document struct {
	line int
	text []byte
}

// splitYAML cuts a YAML stream at "---" separator lines, remembering where each document starts.
func splitYAML(data []byte) []document {
	var docs []document
	cur := document{line: 1}
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i+1], data[i+1:]
		} else {
			data = nil
		}
		if sep, rest := isSeparator(line); sep {
			docs = append(docs, cur)
			cur = document{line: lineNo + 1}
			if rest != nil {
				cur.line = lineNo
				cur.text = append(cur.text, rest...)
			}
			continue
		}
		cur.text = append(cur.text, line...)
	}
	return append(docs, cur)
}

// isSeparator reports whether line is a document separator; rest is content that follows it on the same line
// (other than a comment), which belongs to the next document.
func isSeparator(line []byte) (bool, []byte) {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false, nil
	}
	rest := line[3:]
	trimmed := bytes.TrimSpace(rest)
	if len(trimmed) == 0 || trimmed[0] == '#' {
		return true, nil
	}
	if rest[0] != ' ' && rest[0] != '\t' {
		return false, nil // "----" or "---foo" is content
	}
	return true, append(trimmed, '\n')
}

func (p *parser) parseYAMLDoc(index int, d document) {
	js, err := yaml.YAMLToJSON(d.text)
	if err != nil {
		p.errs = append(p.errs, &Error{Source: p.source, Document: index, Line: d.line, Kind: guessKind(d.text), Err: fileLines(err, d.line)})
		return
	}
	p.parseObject(index, 0, d.line, js)
}

func (p *parser) parseJSONStream(data []byte) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	for index := 1; ; index++ {
		start := dec.InputOffset()
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return
		}
		line := 1 + bytes.Count(data[:start], []byte("\n"))
		if err != nil {
			p.errs = append(p.errs, &Error{Source: p.source, Document: index, Line: line, Err: err})
			return // the decoder cannot resynchronise after a syntax error
		}
		if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '[' {
			var items []json.RawMessage
			if err := json.Unmarshal(raw, &items); err != nil {
				p.errs = append(p.errs, &Error{Source: p.source, Document: index, Line: line, Err: err})
				continue
			}
			for i, it := range items {
				p.parseObject(index, i+1, line, it)
			}
			continue
		}
		p.parseObject(index, 0, line, raw)
	}
}

// header is the part of every object read before its kind is known.
type header struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   json.RawMessage `json:"metadata"`
	Items      json.RawMessage `json:"items"`
}

type nameMeta struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

func (p *parser) parseObject(index, item, line int, js []byte) {
	fail := func(e *Error) { p.errs = append(p.errs, e) }
	loc := &Error{Source: p.source, Document: index, Item: item, Line: line}
	js = bytes.TrimSpace(js)
	if len(js) == 0 || bytes.Equal(js, []byte("null")) {
		return // empty document: comments only, or a trailing separator
	}
	if js[0] != '{' {
		loc.Err = errors.New("document is not an object")
		fail(loc)
		return
	}
	var h header
	if err := json.Unmarshal(js, &h); err != nil {
		loc.Err = fmt.Errorf("reading apiVersion, kind and metadata: %w", err)
		fail(loc)
		return
	}
	loc.Kind = h.Kind
	var meta nameMeta
	if len(h.Metadata) > 0 {
		if err := json.Unmarshal(h.Metadata, &meta); err != nil {
			loc.Err = fmt.Errorf("metadata: %w", err)
			fail(loc)
			return
		}
	}
	if item == 0 && (h.Kind == "List" || strings.HasSuffix(h.Kind, "List")) && len(h.Items) > 0 {
		var items []json.RawMessage
		if err := json.Unmarshal(h.Items, &items); err != nil {
			loc.Err = fmt.Errorf("items: %w", err)
			fail(loc)
			return
		}
		for i, it := range items {
			p.parseObject(index, i+1, line, it)
		}
		return
	}
	switch {
	case h.Kind == "":
		loc.Err = errors.New("kind is missing")
		fail(loc)
		return
	case h.APIVersion == "":
		loc.Err = errors.New("apiVersion is missing")
		fail(loc)
		return
	}
	s, ok := schema.Lookup(h.APIVersion, h.Kind)
	if !ok {
		group, _ := schema.SplitAPIVersion(h.APIVersion)
		if versions := schema.VersionsOf(group, h.Kind); len(versions) > 0 {
			loc.Name, loc.Namespace = meta.Name, defaultNamespace(meta.Namespace, true)
			loc.Err = fmt.Errorf("apiVersion %q is not supported for %s (use one of %s)", h.APIVersion, h.Kind, strings.Join(versions, ", "))
			fail(loc)
			return
		}
		p.out.Skipped++
		level := slog.LevelDebug
		if schema.IsIstioGroup(group) {
			// Someone wrote Istio config expecting an effect: say it is not served.
			level = slog.LevelWarn
		}
		slog.Log(context.Background(), level, "skipping object of a kind meshd does not read",
			"source", p.source, "document", index, "apiVersion", h.APIVersion, "kind", h.Kind, "name", meta.Name)
		return
	}
	if meta.Name == "" {
		loc.Err = errors.New("metadata.name is required")
		fail(loc)
		return
	}
	loc.Name = meta.Name
	loc.Namespace = defaultNamespace(meta.Namespace, s.Namespaced)
	var err error
	if s.IsIstio() {
		err = p.parseIstio(s, js, loc.Namespace)
	} else {
		err = p.parseKube(s, js, loc.Namespace)
	}
	if err != nil {
		loc.Err = err
		fail(loc)
	}
}

func defaultNamespace(ns string, namespaced bool) string {
	if !namespaced {
		return ""
	}
	if ns == "" {
		return DefaultNamespace
	}
	return ns
}

type istioObject struct {
	Metadata metav1.ObjectMeta `json:"metadata"`
	Spec     json.RawMessage   `json:"spec"`
}

func (p *parser) parseIstio(s *schema.Schema, js []byte, namespace string) error {
	var obj istioObject
	if err := json.Unmarshal(js, &obj); err != nil {
		return err
	}
	spec := s.NewSpec()
	if raw := bytes.TrimSpace(obj.Spec); len(raw) > 0 {
		if err := decodeSpec(raw, spec); err != nil {
			return err
		}
	}
	p.out.Configs = append(p.out.Configs, &model.Config{
		Kind:              s.ModelKind,
		Name:              obj.Metadata.Name,
		Namespace:         namespace,
		Labels:            obj.Metadata.Labels,
		Annotations:       obj.Metadata.Annotations,
		ResourceVersion:   obj.Metadata.ResourceVersion,
		CreationTimestamp: obj.Metadata.CreationTimestamp.Time,
		Source:            p.source,
		Spec:              spec,
	})
	return nil
}

func (p *parser) parseKube(s *schema.Schema, js []byte, namespace string) error {
	switch s.Kind {
	case schema.KindService:
		var o corev1.Service
		if err := json.Unmarshal(js, &o); err != nil {
			return err
		}
		o.Namespace = namespace
		p.out.Services = append(p.out.Services, &o)
	case schema.KindPod:
		var o corev1.Pod
		if err := json.Unmarshal(js, &o); err != nil {
			return err
		}
		o.Namespace = namespace
		p.out.Pods = append(p.out.Pods, &o)
	case schema.KindServiceAccount:
		var o corev1.ServiceAccount
		if err := json.Unmarshal(js, &o); err != nil {
			return err
		}
		o.Namespace = namespace
		p.out.ServiceAccounts = append(p.out.ServiceAccounts, &o)
	case schema.KindNamespace:
		var o corev1.Namespace
		if err := json.Unmarshal(js, &o); err != nil {
			return err
		}
		o.Namespace = ""
		p.out.Namespaces = append(p.out.Namespaces, &o)
	case schema.KindEndpointSlice:
		var o discoveryv1.EndpointSlice
		if err := json.Unmarshal(js, &o); err != nil {
			return err
		}
		o.Namespace = namespace
		p.out.EndpointSlices = append(p.out.EndpointSlices, &o)
	default:
		return fmt.Errorf("no decoder for %s", s.Kind)
	}
	return nil
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

// fileLines rewrites the line numbers of a YAML error, counted from the start of the document, as lines of the
// file.
func fileLines(err error, docLine int) error {
	msg := yamlLine.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, convErr := strconv.Atoi(m[len("line "):])
		if convErr != nil {
			return m
		}
		return "line " + strconv.Itoa(n+docLine-1)
	})
	return errors.New(msg)
}

var kindLine = regexp.MustCompile(`(?m)^kind:\s*["']?([A-Za-z0-9]+)`)

// guessKind finds the kind of a document that is not valid YAML, for messages and metrics.
func guessKind(text []byte) string {
	if m := kindLine.FindSubmatch(text); m != nil {
		return string(m[1])
	}
	return ""
}
