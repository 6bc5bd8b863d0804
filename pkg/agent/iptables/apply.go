package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
)

// RestoreCommand is the command Apply runs; the rules are fed on stdin.
var RestoreCommand = []string{"iptables-restore", "--noflush"}

// Apply loads rules (as produced by Rules) with `iptables-restore
// --noflush`. Only IPv4 is handled. Errors carry the tool's stderr.
func Apply(ctx context.Context, rules string) error {
	return ApplyCommand(ctx, rules, RestoreCommand...)
}

// ApplyCommand is Apply with an explicit command line (for example
// `ip netns exec NS iptables-restore --noflush`).
func ApplyCommand(ctx context.Context, rules string, argv ...string) error {
	if len(argv) == 0 {
		return errors.New("iptables: empty restore command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(rules)
	var stderr, stdout bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stdout
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		if msg == "" {
			return fmt.Errorf("iptables: %s: %w", strings.Join(argv, " "), err)
		}
		return fmt.Errorf("iptables: %s: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return nil
}

// tproxyTable is the routing table TPROXY-marked packets are looked up in, as in Istio.
const tproxyTable = "133"

// RouteCommands returns the `ip` commands TPROXY mode needs besides the rules: packets the mangle rules mark
// are looked up in table 133, whose only route is local, so that they are delivered to the proxy's transparent
// listener instead of being forwarded. nil in REDIRECT mode.
func (c *Config) RouteCommands() [][]string {
	if c.Mode != ModeTProxy {
		return nil
	}
	mark := strconv.FormatUint(uint64(c.TProxyMark), 10)
	return [][]string{
		{"ip", "-f", "inet", "rule", "add", "fwmark", mark, "lookup", tproxyTable},
		{"ip", "-f", "inet", "route", "add", "local", "default", "dev", "lo", "table", tproxyTable},
	}
}

// ApplyRoutes runs RouteCommands, each after prefix (for example `ip netns exec NS`). A route that already
// exists is not an error, so that a re-run (a restarted init container) succeeds.
func (c *Config) ApplyRoutes(ctx context.Context, prefix ...string) error {
	for _, argv := range c.RouteCommands() {
		argv = append(append([]string{}, prefix...), argv...)
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "File exists") {
			return fmt.Errorf("iptables: %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// Run applies the configuration's rules and, in TPROXY mode, its policy routing; with DryRun it prints them to
// w instead: the rules in iptables-save format, then the routing commands as comments.
func (c *Config) Run(ctx context.Context, w io.Writer) error {
	rules := c.Rules()
	if c.DryRun {
		var b strings.Builder
		b.WriteString(rules)
		for _, argv := range c.RouteCommands() {
			b.WriteString("# " + strings.Join(argv, " ") + "\n")
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	if err := Apply(ctx, rules); err != nil {
		return err
	}
	return c.ApplyRoutes(ctx)
}
