package nds

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"
)

func sampleTable() *NameTable {
	return &NameTable{Table: map[string]*NameInfo{
		"reviews.default.svc.cluster.local": {
			IPs: []string{"10.96.0.13", "fd00::13"}, Registry: RegistryKubernetes, Shortname: "reviews",
			Namespace: "default", AltHosts: []string{"reviews", "reviews.default", "reviews.default.svc"},
		},
		"api.example.com":                 {IPs: []string{"240.240.0.1"}, Registry: RegistryExternal, Namespace: "ext"},
		"db.data.svc.cluster.local":       {IPs: []string{"10.0.5.1", "10.0.5.2"}, Registry: RegistryKubernetes},
		"empty.default.svc.cluster.local": {},
	}}
}

func TestRoundTrip(t *testing.T) {
	in := sampleTable()
	out, err := FromAny(in.Any())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip changed the table:\n in: %+v\nout: %+v", in.Table, out.Table)
	}
}

func TestMarshalDeterministic(t *testing.T) {
	a := sampleTable().Marshal()
	for range 20 { // map iteration order differs run to run; the bytes must not
		if b := sampleTable().Marshal(); !bytes.Equal(a, b) {
			t.Fatal("two marshals of the same table differ")
		}
	}
}

// TestGolden pins the bytes of a one-entry table, computed by hand from the proto definition.
func TestGolden(t *testing.T) {
	tbl := &NameTable{Table: map[string]*NameInfo{
		"a.b": {IPs: []string{"1.2.3.4"}, Registry: "K", Shortname: "a", Namespace: "b", AltHosts: []string{"a"}},
	}}
	want := []byte{
		0x0a, 0x1c, // table (1, LEN), entry of 28 bytes: key 5 + value tag/len 2 + value 21
		0x0a, 0x03, 'a', '.', 'b', // key (1, LEN) "a.b"
		0x12, 0x15, // value (2, LEN), NameInfo of 21 bytes: ips 9 + four 3-byte strings
		0x0a, 0x07, '1', '.', '2', '.', '3', '.', '4', // ips (1)
		0x12, 0x01, 'K', // registry (2)
		0x1a, 0x01, 'a', // shortname (3)
		0x22, 0x01, 'b', // namespace (4)
		0x2a, 0x01, 'a', // alt_hosts (5)
	}
	if got := tbl.Marshal(); !bytes.Equal(got, want) {
		t.Fatalf("Marshal:\n got % x\nwant % x", got, want)
	}
	// An entry with an empty value still carries both fields, as generated code writes map entries.
	empty := &NameTable{Table: map[string]*NameInfo{"x": {}}}
	if got, want := empty.Marshal(), []byte{0x0a, 0x05, 0x0a, 0x01, 'x', 0x12, 0x00}; !bytes.Equal(got, want) {
		t.Fatalf("empty entry:\n got % x\nwant % x", got, want)
	}
}

func TestUnknownFieldsSkipped(t *testing.T) {
	var info []byte
	info = protowire.AppendTag(info, 9, protowire.VarintType) // unknown varint in NameInfo
	info = protowire.AppendVarint(info, 300)
	info = appendString(info, fieldIPs, "10.0.0.1")
	info = protowire.AppendTag(info, fieldRegistry, protowire.Fixed32Type) // known number, wrong wire type
	info = protowire.AppendFixed32(info, 7)
	info = appendString(info, 77, "future field")
	info = appendString(info, fieldShortname, "svc")

	var entry []byte
	entry = appendString(entry, fieldEntryKey, "svc.ns.svc.cluster.local")
	entry = protowire.AppendTag(entry, 3, protowire.Fixed64Type) // unknown in the map entry
	entry = protowire.AppendFixed64(entry, 1)
	entry = protowire.AppendTag(entry, fieldEntryValue, protowire.BytesType)
	entry = protowire.AppendBytes(entry, info)

	var b []byte
	b = appendString(b, 2, "unknown top-level field")
	b = protowire.AppendTag(b, 5, protowire.StartGroupType) // a whole unknown group
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 1)
	b = protowire.AppendTag(b, 5, protowire.EndGroupType)
	b = protowire.AppendTag(b, fieldTable, protowire.BytesType)
	b = protowire.AppendBytes(b, entry)

	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	want := &NameTable{Table: map[string]*NameInfo{"svc.ns.svc.cluster.local": {IPs: []string{"10.0.0.1"}, Shortname: "svc"}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got.Table, want.Table)
	}
}

func TestUnmarshalRejectsMalformed(t *testing.T) {
	good := sampleTable().Marshal()
	for name, b := range map[string][]byte{
		"truncated":       good[:len(good)-3],
		"length too long": {0x0a, 0x7f, 0x0a},
		"field zero":      {0x00, 0x01},
		"bad utf8 key":    {0x0a, 0x03, 0x0a, 0x01, 0xff},
		"bad utf8 ip":     {0x0a, 0x08, 0x0a, 0x01, 'x', 0x12, 0x03, 0x0a, 0x01, 0xff},
	} {
		if _, err := Unmarshal(b); err == nil {
			t.Errorf("%s: Unmarshal(% x) succeeded", name, b)
		}
	}
	if _, err := FromAny(&anypb.Any{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster", Value: good}); err == nil ||
		!strings.Contains(err.Error(), "Cluster") {
		t.Errorf("FromAny of another type: err = %v", err)
	}
}

// nameTableDescriptor is Istio's proto, built by hand (no protoc here), so the standard protobuf runtime can
// check that our bytes are what generated code reads and writes.
func nameTableDescriptor(t *testing.T) protoreflect.MessageDescriptor {
	t.Helper()
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	msg := descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum()
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	rep := descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	field := func(name string, num int32, label *descriptorpb.FieldDescriptorProto_Label,
		typ *descriptorpb.FieldDescriptorProto_Type, typeName string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(num), Label: label, Type: typ,
			JsonName: proto.String(name)}
		if typeName != "" {
			f.TypeName = proto.String(typeName)
		}
		return f
	}
	fd := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("dns/proto/nds.proto"),
		Package: proto.String("istio.networking.nds.v1"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("NameTable"),
			Field: []*descriptorpb.FieldDescriptorProto{
				field("table", 1, rep, msg, ".istio.networking.nds.v1.NameTable.TableEntry"),
			},
			NestedType: []*descriptorpb.DescriptorProto{
				{
					Name: proto.String("NameInfo"),
					Field: []*descriptorpb.FieldDescriptorProto{
						field("ips", 1, rep, str, ""),
						field("registry", 2, opt, str, ""),
						field("shortname", 3, opt, str, ""),
						field("namespace", 4, opt, str, ""),
						field("alt_hosts", 5, rep, str, ""),
					},
				},
				{
					Name: proto.String("TableEntry"),
					Field: []*descriptorpb.FieldDescriptorProto{
						field("key", 1, opt, str, ""),
						field("value", 2, opt, msg, ".istio.networking.nds.v1.NameTable.NameInfo"),
					},
					Options: &descriptorpb.MessageOptions{MapEntry: proto.Bool(true)},
				},
			},
		}},
	}
	file, err := protodesc.NewFile(fd, nil)
	if err != nil {
		t.Fatal(err)
	}
	md := file.Messages().ByName("NameTable")
	if got := "type.googleapis.com/" + string(md.FullName()); got != TypeURL {
		t.Fatalf("TypeURL = %q, the proto's is %q", TypeURL, got)
	}
	return md
}

// TestWireCompatibleWithGeneratedCode encodes the same table with the protobuf runtime over Istio's descriptor
// and compares bytes both ways.
func TestWireCompatibleWithGeneratedCode(t *testing.T) {
	md := nameTableDescriptor(t)
	tbl := sampleTable()

	ref := dynamicpb.NewMessage(md)
	m := ref.Mutable(md.Fields().ByName("table")).Map()
	infoMD := md.Messages().ByName("NameInfo")
	for host, ni := range tbl.Table {
		v := dynamicpb.NewMessage(infoMD)
		for _, ip := range ni.IPs {
			l := v.Mutable(infoMD.Fields().ByName("ips")).List()
			l.Append(protoreflect.ValueOfString(ip))
		}
		for name, s := range map[protoreflect.Name]string{"registry": ni.Registry, "shortname": ni.Shortname, "namespace": ni.Namespace} {
			if s != "" {
				v.Set(infoMD.Fields().ByName(name), protoreflect.ValueOfString(s))
			}
		}
		for _, h := range ni.AltHosts {
			v.Mutable(infoMD.Fields().ByName("alt_hosts")).List().Append(protoreflect.ValueOfString(h))
		}
		m.Set(protoreflect.ValueOfString(host).MapKey(), protoreflect.ValueOfMessage(v))
	}
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(ref)
	if err != nil {
		t.Fatal(err)
	}
	if got := tbl.Marshal(); !bytes.Equal(got, want) {
		t.Fatalf("our bytes differ from generated code's:\n got % x\nwant % x", got, want)
	}

	// And the runtime reads ours back to an equal message.
	back := dynamicpb.NewMessage(md)
	if err := proto.Unmarshal(tbl.Marshal(), back); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(back, ref) {
		t.Fatal("the protobuf runtime decodes our bytes to a different message")
	}
	ours, err := Unmarshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ours, tbl) {
		t.Fatalf("decoding generated bytes: got %+v", ours.Table)
	}
}
