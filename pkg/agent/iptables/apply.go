package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
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

// Run applies the configuration's rules, or prints them to w when DryRun
// is set.
func (c *Config) Run(ctx context.Context, w io.Writer) error {
	rules := c.Rules()
	if c.DryRun {
		_, err := io.WriteString(w, rules)
		return err
	}
	return Apply(ctx, rules)
}
