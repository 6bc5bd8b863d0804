package iptables

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// helperEnv selects a helper mode when the test binary is re-executed
// inside a network namespace.
const helperEnv = "MESHD_IPT_HELPER"

const (
	appAddr    = "10.1.2.1"       // the "pod" side, namespace A
	remoteAddr = "10.1.2.3"       // the destination, namespace B
	remotePort = 8080             // its port
	proxyUID   = 1337             // the proxy uid the rules exclude
	ioTimeout  = 5 * time.Second  // per dial/read inside the helpers
	cmdTimeout = 15 * time.Second // per command run by the test
)

// netnsEnv checks that the test can create network namespaces and apply
// rules, and skips (saying why) when it cannot.
func netnsEnv(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and load iptables rules")
	}
	for _, tool := range []string{"ip", "iptables-restore", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found (Debian: apt-get install iptables iproute2): %v", tool, err)
		}
	}
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates a uniquely named namespace with lo up, deleted when the
// test ends, or skips the test when namespaces cannot be created here.
func newNetns(t *testing.T, suffix string) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "meshd-ipt-" + hex.EncodeToString(b[:]) + suffix
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace here: ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// TestRulesRoundTripThroughIptables loads every golden rule set into a
// fresh namespace with iptables-restore and checks that iptables-save
// prints each generated rule back unchanged (so the text is both valid
// and in iptables-save's canonical form).
func TestRulesRoundTripThroughIptables(t *testing.T) {
	netnsEnv(t)
	withResolvConf(t)
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			ns := newNetns(t, "")
			rules := goldenRules(t, tc.args)
			ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
			defer cancel()
			if err := ApplyCommand(ctx, rules, "ip", "netns", "exec", ns, "iptables-restore", "--noflush"); err != nil {
				t.Fatal(err)
			}
			saved := run(t, "ip", "netns", "exec", ns, "iptables-save")
			have := map[string]bool{}
			for _, l := range strings.Split(saved, "\n") {
				have[l] = true
			}
			for _, l := range strings.Split(rules, "\n") {
				if strings.HasPrefix(l, "-A ") && !have[l] {
					t.Errorf("rule not printed back by iptables-save: %s", l)
				}
			}
			if t.Failed() {
				t.Logf("iptables-save:\n%s", saved)
			}
		})
	}
}

func TestApplyReportsIptablesErrors(t *testing.T) {
	netnsEnv(t)
	ns := newNetns(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	err := ApplyCommand(ctx, "*nat\n-A NO_SUCH_CHAIN -j RETURN\nCOMMIT\n", "ip", "netns", "exec", ns, "iptables-restore", "--noflush")
	if err == nil {
		t.Fatal("bad rules applied without error")
	}
	if !strings.Contains(err.Error(), "iptables-restore") || !strings.Contains(err.Error(), "line") {
		t.Errorf("error lacks iptables-restore's message: %v", err)
	}
}

// TestTProxyRoutingInNetns: TPROXY mode sets up the policy routing that delivers marked packets locally
// (fwmark → table 133 → local default via lo), and a second run (a restarted init container) still succeeds.
func TestTProxyRoutingInNetns(t *testing.T) {
	netnsEnv(t)
	ns := newNetns(t, "")
	cfg, err := Parse([]string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	for range 2 {
		if err := cfg.ApplyRoutes(ctx, "ip", "netns", "exec", ns); err != nil {
			t.Fatal(err)
		}
	}
	if rules := run(t, "ip", "-n", ns, "rule", "show"); !strings.Contains(rules, "fwmark 0x539 lookup 133") {
		t.Errorf("no fwmark rule for the TPROXY mark:\n%s", rules)
	}
	if routes := run(t, "ip", "-n", ns, "route", "show", "table", "133"); !strings.Contains(routes, "local default dev lo") {
		t.Errorf("table 133 has no local default route:\n%s", routes)
	}
	redirect, err := Parse([]string{"-p", "15001", "-m", "REDIRECT"})
	if err != nil {
		t.Fatal(err)
	}
	if cmds := redirect.RouteCommands(); cmds != nil {
		t.Errorf("REDIRECT mode wants no policy routing, got %v", cmds)
	}
}

// TestRedirectInNetns applies the typical sidecar rules in namespace A,
// linked by a veth pair to namespace B (10.1.2.3, serving port 8080), and
// shows that a root process's connection to 10.1.2.3:8080 lands on the
// proxy port 127.0.0.1:15001 with SO_ORIGINAL_DST = 10.1.2.3:8080, while
// the proxy uid's connection goes straight to B.
func TestRedirectInNetns(t *testing.T) {
	netnsEnv(t)
	nsA := newNetns(t, "a")
	nsB := newNetns(t, "b")
	run(t, "ip", "link", "add", "mvA", "netns", nsA, "type", "veth", "peer", "name", "mvB", "netns", nsB)
	run(t, "ip", "-n", nsA, "addr", "add", appAddr+"/24", "dev", "mvA")
	run(t, "ip", "-n", nsA, "link", "set", "mvA", "up")
	run(t, "ip", "-n", nsB, "addr", "add", remoteAddr+"/24", "dev", "mvB")
	run(t, "ip", "-n", nsB, "link", "set", "mvB", "up")

	cfg, err := Parse([]string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if err := ApplyCommand(ctx, cfg.Rules(), "ip", "netns", "exec", nsA, "iptables-restore", "--noflush"); err != nil {
		t.Fatal(err)
	}

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The real destination in B; it stays up until its stdin closes.
	// Own context: ctx is cancelled when this function returns, before
	// the cleanup below has closed stdin and waited.
	serverCtx, serverCancel := context.WithTimeout(context.Background(), cmdTimeout)
	server := exec.CommandContext(serverCtx, "ip", "netns", "exec", nsB, self, "-test.run=^TestNetnsHelper$")
	server.Env = append(os.Environ(), helperEnv+"=server")
	stdin, err := server.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := server.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	server.Stderr = os.Stderr
	if err := server.Start(); err != nil {
		serverCancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer serverCancel()
		stdin.Close()
		if err := server.Wait(); err != nil {
			t.Errorf("server helper: %v", err)
		}
	})
	ready, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || ready != "ready\n" {
		t.Fatalf("server helper did not start: %q %v", ready, err)
	}

	// The proxy stand-in and the two clients in A.
	client := exec.CommandContext(ctx, "ip", "netns", "exec", nsA, self, "-test.run=^TestNetnsHelper$")
	client.Env = append(os.Environ(), helperEnv+"=proxy-and-clients")
	out, err := client.CombinedOutput()
	if err != nil {
		t.Fatalf("proxy/client helper: %v\n%s", err, out)
	}
	results := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && strings.HasPrefix(k, "uid") {
			results[k] = v
		}
	}
	want := fmt.Sprintf("proxy original-dst=%s:%d", remoteAddr, remotePort)
	if got := results["uid0"]; got != want {
		t.Errorf("root's connection: got %q, want %q\nhelper output:\n%s", got, want, out)
	}
	if got := results["uid1337"]; got != "direct" {
		t.Errorf("proxy uid's connection: got %q, want %q (not redirected)\nhelper output:\n%s", got, "direct", out)
	}
}

// TestNetnsHelper is not a test: it is the helper process that
// TestRedirectInNetns runs inside a namespace.
func TestNetnsHelper(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process for TestRedirectInNetns")
	}
	var err error
	switch mode {
	case "server":
		err = helperServer()
	case "proxy-and-clients":
		err = helperProxyAndClients()
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// helperServer answers "direct" on 10.1.2.3:8080 until stdin closes.
func helperServer() error {
	ln, err := net.Listen("tcp4", fmt.Sprintf("%s:%d", remoteAddr, remotePort))
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "direct\n")
			c.Close()
		}
	}()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return ln.Close()
}

// helperProxyAndClients listens on the proxy port as root, answering with
// each connection's SO_ORIGINAL_DST, then connects to 10.1.2.3:8080 first
// as root and then as the proxy uid, printing what answered.
func helperProxyAndClients() error {
	ln, err := net.Listen("tcp4", "127.0.0.1:15001")
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dst, err := originalDst(c.(*net.TCPConn))
			if err != nil {
				fmt.Fprintf(c, "proxy error=%v\n", err)
			} else {
				fmt.Fprintf(c, "proxy original-dst=%s\n", dst)
			}
			c.Close()
		}
	}()
	target := fmt.Sprintf("%s:%d", remoteAddr, remotePort)
	fmt.Printf("uid0=%s\n", dialAndRead(target))
	// The owner match uses the uid of the socket's creator; switch this
	// (single-purpose) process to the proxy uid for the second client.
	if err := syscall.Setuid(proxyUID); err != nil {
		return fmt.Errorf("setuid %d: %w", proxyUID, err)
	}
	fmt.Printf("uid%d=%s\n", proxyUID, dialAndRead(target))
	return nil
}

func dialAndRead(addr string) string {
	c, err := net.DialTimeout("tcp4", addr, ioTimeout)
	if err != nil {
		return "dial error: " + err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "read error: " + err.Error()
	}
	return strings.TrimSuffix(line, "\n")
}

// originalDst reads SO_ORIGINAL_DST (SOL_IP, 80): the destination a
// connection had before REDIRECT rewrote it.
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	const soOriginalDst = 80
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var sa syscall.RawSockaddrInet4
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		size := uint32(unsafe.Sizeof(sa))
		_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_IP, soOriginalDst,
			uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			sockErr = errno
		}
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if sockErr != nil {
		return netip.AddrPort{}, fmt.Errorf("getsockopt SO_ORIGINAL_DST: %w", sockErr)
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), nil
}
