package model

import (
	"maps"
	"time"
)

// TriggerReason says why a push happened; the values are the labels of the pilot_push_triggers metric.
type TriggerReason string

const (
	ReasonEndpointUpdate  TriggerReason = "endpoint"
	ReasonConfigUpdate    TriggerReason = "config"
	ReasonServiceUpdate   TriggerReason = "service"
	ReasonProxyUpdate     TriggerReason = "proxy"
	ReasonGlobalUpdate    TriggerReason = "global"
	ReasonUnknown         TriggerReason = "unknown"
	ReasonDebug           TriggerReason = "debug"
	ReasonSecret          TriggerReason = "secret"
	ReasonNamespaceUpdate TriggerReason = "namespace"
)

// PushRequest describes what changed. Requests are merged while debouncing, so every field must merge cleanly.
type PushRequest struct {
	// Full is false only when nothing but endpoints changed: then only EDS is pushed.
	Full bool
	// ConfigsUpdated names what changed; empty with Full set means "everything may have changed".
	ConfigsUpdated map[ConfigKey]struct{}
	// Reason counts the triggers that make up this request.
	Reason map[TriggerReason]int
	// Start is when the first change in this request happened, for convergence time.
	Start time.Time
	// Push is the context to generate from; set by the server when the request is dispatched.
	Push *PushContext
}

// NewPushRequest returns a request for one change.
func NewPushRequest(full bool, reason TriggerReason, keys ...ConfigKey) *PushRequest {
	r := &PushRequest{Full: full, Reason: map[TriggerReason]int{reason: 1}, Start: time.Now()}
	if len(keys) > 0 {
		r.ConfigsUpdated = make(map[ConfigKey]struct{}, len(keys))
		for _, k := range keys {
			r.ConfigsUpdated[k] = struct{}{}
		}
	}
	return r
}

// Merge combines two requests into a new one; neither input is modified. Nil is the identity.
func (r *PushRequest) Merge(o *PushRequest) *PushRequest {
	if r == nil {
		return o
	}
	if o == nil {
		return r
	}
	m := &PushRequest{
		Full:   r.Full || o.Full,
		Start:  r.Start,
		Reason: make(map[TriggerReason]int, len(r.Reason)+len(o.Reason)),
		Push:   o.Push,
	}
	if o.Start.Before(m.Start) {
		m.Start = o.Start
	}
	if m.Push == nil {
		m.Push = r.Push
	}
	for k, v := range r.Reason {
		m.Reason[k] += v
	}
	for k, v := range o.Reason {
		m.Reason[k] += v
	}
	// An empty ConfigsUpdated on a full push means "everything", which absorbs any list.
	if (r.Full && len(r.ConfigsUpdated) == 0) || (o.Full && len(o.ConfigsUpdated) == 0) {
		return m
	}
	m.ConfigsUpdated = make(map[ConfigKey]struct{}, len(r.ConfigsUpdated)+len(o.ConfigsUpdated))
	maps.Copy(m.ConfigsUpdated, r.ConfigsUpdated)
	maps.Copy(m.ConfigsUpdated, o.ConfigsUpdated)
	return m
}

// OnlyKinds reports whether every updated key is one of the given kinds (false for "everything").
func (r *PushRequest) OnlyKinds(kinds ...Kind) bool {
	if len(r.ConfigsUpdated) == 0 {
		return false
	}
	for k := range r.ConfigsUpdated {
		found := false
		for _, kind := range kinds {
			if k.Kind == kind {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
