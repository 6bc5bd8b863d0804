// Package logging holds what meshd's binaries share about logs: Istio's --log_output_level syntax.
package logging

import (
	"fmt"
	"log/slog"
	"strings"
)

// ParseLevel reads istio's --log_output_level ("default:info,ads:debug"): the default scope (or a bare
// level) sets the level; meshd logs through one structured logger, so other scopes are accepted and ignored.
func ParseLevel(s string) (slog.Level, error) {
	level := slog.LevelInfo
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		scope, lvl, found := strings.Cut(part, ":")
		if !found {
			scope, lvl = "default", part
		}
		l, err := levelOf(lvl)
		if err != nil {
			return 0, fmt.Errorf("--log_output_level %q: scope %s: %w", s, scope, err)
		}
		if scope == "default" || scope == "all" {
			level = l
		}
	}
	return level, nil
}

func levelOf(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error", "fatal":
		return slog.LevelError, nil
	case "none":
		return slog.LevelError + 4, nil
	}
	return 0, fmt.Errorf("unknown level %q (want debug, info, warn, error or none)", s)
}
