package iptables

import (
	"bytes"
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// goldenCases are istio-iptables command lines and the golden file each
// must produce. They are also applied in a network namespace by
// TestRulesRoundTripThroughIptables.
var goldenCases = []struct {
	name string
	args []string
}{
	{"sidecar_redirect", []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"}},
	{"sidecar_tproxy", []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"}},
	{"sidecar_dns", []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--redirect-dns"}},
	{"sidecar_dns_all", []string{"--envoy-port=15001", "--inbound-capture-port=15006", "--proxy-uid=1337", "--istio-service-cidr=*", "--istio-inbound-ports=*", "--istio-local-exclude-ports=15090,15021,15020", "--redirect-dns", "--capture-all-dns"}},
	{"selective", []string{"-p", "15001", "-z", "15006", "-u", "1337", "-g", "1338", "-m", "REDIRECT",
		"-i", "10.96.0.0/12,10.244.0.0/16", "-x", "10.96.0.1", "-b", "8080,9090", "-d", "15090", "-o", "3306,6379", "-k", "eth1"}},
	{"tproxy_selective", []string{"-m", "TPROXY", "-b", "8080,9090", "-i", "*", "-x", "169.254.169.254/32", "-k", "net1", "-t", "1337"}},
	{"no_inbound", []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-b", ""}},
}

func withResolvConf(t *testing.T) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "resolv.conf")
	content := "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n"
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	old := ResolvConfPath
	ResolvConfPath = p
	t.Cleanup(func() { ResolvConfPath = old })
}

func goldenRules(t *testing.T, args []string) string {
	t.Helper()
	c, err := Parse(args)
	if err != nil {
		t.Fatalf("Parse(%q): %v", args, err)
	}
	return c.Rules()
}

func TestGolden(t *testing.T) {
	withResolvConf(t)
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			got := goldenRules(t, tc.args)
			if again := goldenRules(t, tc.args); again != got {
				t.Fatal("Rules() is not deterministic")
			}
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs from Rules() (run with -update after reviewing):\n--- got\n%s\n--- want\n%s", path, got, want)
			}
		})
	}
}

func TestParseDefaultsAndSpellings(t *testing.T) {
	short, err := Parse([]string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"})
	if err != nil {
		t.Fatal(err)
	}
	long, err := Parse([]string{"--envoy-port", "15001", "--inbound-capture-port=15006", "--proxy-uid", "1337",
		"--istio-inbound-interception-mode", "REDIRECT", "--istio-service-cidr", "*", "--istio-service-exclude-cidr", "",
		"--istio-inbound-ports", "*", "--istio-local-exclude-ports", "15090,15021,15020"})
	if err != nil {
		t.Fatal(err)
	}
	if short.Rules() != long.Rules() {
		t.Error("short and long spellings give different rules")
	}
	if short.ProxyGID != 1337 {
		t.Errorf("GID defaults to UID: got %d", short.ProxyGID)
	}
	if !short.IncludeAllOutbound || !short.IncludeAllInbound || len(short.ExcludeOutbound) != 0 {
		t.Errorf("unexpected ranges: %+v", short)
	}
	if got := short.ExcludeInbound; len(got) != 3 || got[0] != 15090 || got[1] != 15021 || got[2] != 15020 {
		t.Errorf("ExcludeInbound = %v", got)
	}
	if short.DryRun {
		t.Error("DryRun set without -n")
	}
	// The defaults (bar -d) equal the typical sidecar command line.
	def, err := Parse([]string{"-d", "15090,15021,15020"})
	if err != nil {
		t.Fatal(err)
	}
	if def.Rules() != short.Rules() {
		t.Error("defaults differ from the typical sidecar arguments")
	}
	g, err := Parse([]string{"-u", "1000", "--proxy-gid=2000", "-n", "-m", "tproxy"})
	if err != nil {
		t.Fatal(err)
	}
	if g.ProxyUID != 1000 || g.ProxyGID != 2000 || !g.DryRun || g.Mode != ModeTProxy {
		t.Errorf("got %+v", g)
	}
}

func TestParseErrorsNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-p", "abc"}, "--envoy-port"},
		{[]string{"-z", "70000"}, "--inbound-capture-port"},
		{[]string{"-u", "-1"}, "--proxy-uid"},
		{[]string{"-g", "x"}, "--proxy-gid"},
		{[]string{"-m", "NAT"}, "--istio-inbound-interception-mode"},
		{[]string{"-i", "10.0.0.0/33"}, "--istio-service-cidr"},
		{[]string{"-i", "fd00::/8"}, "IPv6"},
		{[]string{"-x", "*"}, "--istio-service-exclude-cidr"},
		{[]string{"-b", "0"}, "--istio-inbound-ports"},
		{[]string{"-d", "15090,x"}, "--istio-local-exclude-ports"},
		{[]string{"-o", "99999"}, "--istio-local-outbound-ports-exclude"},
		{[]string{"-k", "a/b"}, "--kube-virt-interfaces"},
		{[]string{"-t", "0"}, "--istio-inbound-tproxy-mark"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
		{[]string{"-p"}, "-p"},
		{[]string{"stray"}, `"stray"`},
	} {
		_, err := Parse(tc.args)
		if err == nil {
			t.Errorf("Parse(%q): no error", tc.args)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v; want it to mention %q", tc.args, err, tc.want)
		}
	}
}

func TestRedirectDNSNeedsResolvConf(t *testing.T) {
	old := ResolvConfPath
	ResolvConfPath = filepath.Join(t.TempDir(), "missing")
	t.Cleanup(func() { ResolvConfPath = old })
	if _, err := Parse([]string{"--redirect-dns"}); err == nil || !strings.Contains(err.Error(), "--redirect-dns") {
		t.Fatalf("err = %v", err)
	}
	// --capture-all-dns does not read resolv.conf.
	if _, err := Parse([]string{"--redirect-dns", "--capture-all-dns"}); err != nil {
		t.Fatal(err)
	}
}

func TestRunDryRunPrints(t *testing.T) {
	c, err := Parse([]string{"--dry-run"})
	if err != nil {
		t.Fatal(err)
	}
	old := RestoreCommand
	RestoreCommand = []string{"/nonexistent/iptables-restore"}
	t.Cleanup(func() { RestoreCommand = old })
	var out bytes.Buffer
	if err := c.Run(context.Background(), &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != c.Rules() {
		t.Error("dry run did not print the rules")
	}
	c.DryRun = false
	if err := c.Run(context.Background(), &out); err == nil {
		t.Error("non-dry run did not run the restore command")
	}
}

func TestApplyErrorIncludesStderr(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh:", err)
	}
	err = ApplyCommand(context.Background(), "*nat\nCOMMIT\n", sh, "-c", "cat >/dev/null; echo 'line 2 failed: bad rule' >&2; exit 2")
	if err == nil || !strings.Contains(err.Error(), "line 2 failed: bad rule") {
		t.Fatalf("err = %v", err)
	}
	// stdin reaches the command.
	err = ApplyCommand(context.Background(), "*nat\nCOMMIT\n", sh, "-c", `test "$(cat)" = "$(printf '*nat\nCOMMIT')"`)
	if err != nil {
		t.Fatal(err)
	}
}
