// Package nds is the wire form of Istio's DNS name table (NDS), istio.networking.nds.v1.NameTable:
//
//	message NameTable {
//	  message NameInfo {
//	    repeated string ips = 1;
//	    string registry = 2;
//	    string shortname = 3;
//	    string namespace = 4;
//	    repeated string alt_hosts = 5;
//	  }
//	  map<string, NameInfo> table = 1;
//	}
//
// meshd cannot import istio.io/istio and builds without protoc, so the message is encoded by hand with protowire.
// The bytes are those the generated Istio code produces with deterministic marshalling (map entries sorted by
// key, both entry fields always written), so either side may be Istio.
package nds

import (
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/pkg/model"
)

// TypeURL is the xDS type of the name table.
const TypeURL = model.NameTableType

// Registry values Istio puts in NameInfo.Registry.
const (
	RegistryKubernetes = "Kubernetes"
	RegistryExternal   = "External"
)

// NameTable maps fully qualified hostnames (without trailing dot) to what DNS should answer for them.
type NameTable struct {
	Table map[string]*NameInfo
}

// NameInfo is one hostname's entry.
type NameInfo struct {
	// IPs are the addresses to answer with: the service VIPs, or the endpoint addresses of headless services.
	IPs []string
	// Registry is RegistryKubernetes or RegistryExternal; Istio's agent derives search-path forms of Kubernetes
	// names from Shortname and Namespace.
	Registry  string
	Shortname string
	Namespace string
	// AltHosts are further names that resolve to the same IPs (e.g. "reviews.default").
	AltHosts []string
}

// Field numbers of the proto.
const (
	fieldTable = 1 // NameTable.table

	fieldEntryKey   = 1 // map entry key
	fieldEntryValue = 2 // map entry value

	fieldIPs       = 1
	fieldRegistry  = 2
	fieldShortname = 3
	fieldNamespace = 4
	fieldAltHosts  = 5
)

// Marshal encodes the table deterministically: entries sorted by hostname, so equal tables give equal bytes
// (xDS versions are content hashes). A nil table encodes as empty.
func (t *NameTable) Marshal() []byte {
	if t == nil || len(t.Table) == 0 {
		return []byte{}
	}
	keys := make([]string, 0, len(t.Table))
	for k := range t.Table {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out, entry, value []byte
	for _, k := range keys {
		value = t.Table[k].appendTo(value[:0])
		// Like generated code, write key and value even when empty: map entries are always complete.
		entry = protowire.AppendTag(entry[:0], fieldEntryKey, protowire.BytesType)
		entry = protowire.AppendString(entry, k)
		entry = protowire.AppendTag(entry, fieldEntryValue, protowire.BytesType)
		entry = protowire.AppendBytes(entry, value)
		out = protowire.AppendTag(out, fieldTable, protowire.BytesType)
		out = protowire.AppendBytes(out, entry)
	}
	return out
}

func (ni *NameInfo) appendTo(b []byte) []byte {
	if ni == nil {
		return b
	}
	for _, ip := range ni.IPs {
		b = appendString(b, fieldIPs, ip)
	}
	// proto3 scalars are omitted when empty; repeated elements never are.
	for _, f := range []struct {
		num protowire.Number
		v   string
	}{{fieldRegistry, ni.Registry}, {fieldShortname, ni.Shortname}, {fieldNamespace, ni.Namespace}} {
		if f.v != "" {
			b = appendString(b, f.num, f.v)
		}
	}
	for _, h := range ni.AltHosts {
		b = appendString(b, fieldAltHosts, h)
	}
	return b
}

func appendString(b []byte, num protowire.Number, v string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, v)
}

// Unmarshal decodes a table with proto3 semantics: unknown fields (and known fields with an unexpected wire
// type, as generated code does) are skipped, a repeated key replaces the earlier entry, and strings must be
// valid UTF-8.
func Unmarshal(b []byte) (*NameTable, error) {
	t := &NameTable{Table: map[string]*NameInfo{}}
	err := forEachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num != fieldTable || typ != protowire.BytesType {
			return nil
		}
		key, info, err := unmarshalEntry(v)
		if err != nil {
			return fmt.Errorf("table entry: %w", err)
		}
		t.Table[key] = info
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decode NameTable: %w", err)
	}
	return t, nil
}

func unmarshalEntry(b []byte) (string, *NameInfo, error) {
	var key string
	info := &NameInfo{}
	err := forEachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fieldEntryKey:
			if !utf8.Valid(v) {
				return errors.New("key is not valid UTF-8")
			}
			key = string(v)
		case fieldEntryValue:
			// A value split over several fields merges, as for any embedded message.
			if err := info.merge(v); err != nil {
				return fmt.Errorf("value of %q: %w", key, err)
			}
		}
		return nil
	})
	return key, info, err
}

func (ni *NameInfo) merge(b []byte) error {
	return forEachField(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType || num < fieldIPs || num > fieldAltHosts {
			return nil
		}
		if !utf8.Valid(v) {
			return fmt.Errorf("field %d is not valid UTF-8", num)
		}
		s := string(v)
		switch num {
		case fieldIPs:
			ni.IPs = append(ni.IPs, s)
		case fieldRegistry:
			ni.Registry = s
		case fieldShortname:
			ni.Shortname = s
		case fieldNamespace:
			ni.Namespace = s
		case fieldAltHosts:
			ni.AltHosts = append(ni.AltHosts, s)
		}
		return nil
	})
}

// forEachField walks the fields of one message. For length-delimited fields f gets the payload; for others it
// gets nil (none of ours are scalars, so callers only skip them).
func forEachField(b []byte, f func(protowire.Number, protowire.Type, []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("bad tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var payload []byte
		if typ == protowire.BytesType {
			payload, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := f(num, typ, payload); err != nil {
			return err
		}
	}
	return nil
}

// Any wraps the table for an xDS response.
func (t *NameTable) Any() *anypb.Any {
	return &anypb.Any{TypeUrl: TypeURL, Value: t.Marshal()}
}

// FromAny decodes a table from an xDS resource, refusing other types.
func FromAny(a *anypb.Any) (*NameTable, error) {
	if a == nil {
		return nil, errors.New("decode NameTable: nil resource")
	}
	if a.GetTypeUrl() != TypeURL {
		return nil, fmt.Errorf("decode NameTable: resource has type %q, want %q", a.GetTypeUrl(), TypeURL)
	}
	return Unmarshal(a.GetValue())
}
