package parse

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// decodeSpec decodes the JSON of a spec into msg the way Istio reads its resources: unknown fields are an error
// naming the field's path, and durations may be written as Go durations ("500ms", "1m30s") as well as in the
// protobuf JSON form ("0.5s").
func decodeSpec(raw []byte, msg proto.Message) error {
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	if v == nil {
		return nil
	}
	v, unknown := walkSpec(msg.ProtoReflect().Descriptor(), v, "spec")
	if unknown != "" {
		return fmt.Errorf("%s: unknown field", unknown)
	}
	normalized, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	if err := protojson.Unmarshal(normalized, msg); err != nil {
		return errors.New("spec: " + strings.TrimSpace(protojsonLocation.ReplaceAllString(err.Error(), "")))
	}
	return nil
}

// protojsonLocation is the "proto: (line 1:25): " part of protojson errors: positions in JSON made from the
// YAML, which mean nothing to the author of the YAML.
var protojsonLocation = regexp.MustCompile(`^proto:\s*(\(line \d+:\d+\):\s*)?`)

// walkSpec checks v (decoded JSON) against md. It returns v with Go-style durations rewritten in protobuf JSON
// form, and the path of the first field md does not declare ("" when there is none).
func walkSpec(md protoreflect.MessageDescriptor, v any, path string) (any, string) {
	if md.FullName() == "google.protobuf.Duration" {
		if s, ok := v.(string); ok {
			if d, err := time.ParseDuration(s); err == nil {
				return protoDuration(d), ""
			}
		}
		return v, ""
	}
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return v, "" // other well-known types have their own JSON forms (wrappers, Struct, Any)
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return v, ""
	}
	fields := md.Fields()
	for _, key := range slices.Sorted(maps.Keys(obj)) {
		fd := fields.ByJSONName(key)
		if fd == nil {
			fd = fields.ByTextName(key)
		}
		sub := path + "." + key
		if fd == nil {
			return v, sub
		}
		var unknown string
		switch {
		case fd.IsMap():
			if vd := fd.MapValue(); vd.Message() != nil {
				if m, ok := obj[key].(map[string]any); ok {
					for _, k := range slices.Sorted(maps.Keys(m)) {
						if m[k], unknown = walkSpec(vd.Message(), m[k], sub+"["+k+"]"); unknown != "" {
							return v, unknown
						}
					}
				}
			}
		case fd.IsList():
			if fd.Message() != nil {
				if list, ok := obj[key].([]any); ok {
					for i := range list {
						if list[i], unknown = walkSpec(fd.Message(), list[i], sub+"["+strconv.Itoa(i)+"]"); unknown != "" {
							return v, unknown
						}
					}
				}
			}
		case fd.Message() != nil:
			if obj[key], unknown = walkSpec(fd.Message(), obj[key], sub); unknown != "" {
				return v, unknown
			}
		}
	}
	return v, ""
}

// protoDuration writes d in the protobuf JSON form, exactly: "90s", "0.500000000s", "-1.250000000s".
func protoDuration(d time.Duration) string {
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	sec, nsec := d/time.Second, d%time.Second
	if nsec == 0 {
		return fmt.Sprintf("%s%ds", sign, sec)
	}
	return fmt.Sprintf("%s%d.%09ds", sign, sec, nsec)
}
