// Package config holds what every configuration source shares. Its subpackages are the accepted types
// (schema), decoding (parse) and semantic checks (validation).
package config

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// RejectedConfigs counts objects a source refused (undecodable, invalid, or a duplicate), by kind, with Istio's
// metric name so existing dashboards keep working. Every source records into this one counter: a metric name can
// be registered only once.
var RejectedConfigs = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "pilot_total_rejected_configs",
	Help: "Total number of configs that Pilot had to reject or ignore.",
}, []string{"type"})

// RecordRejected counts one rejected object of the given kind ("unknown" when the kind could not be read).
func RecordRejected(kind string) {
	if kind == "" {
		kind = "unknown"
	}
	RejectedConfigs.WithLabelValues(kind).Inc()
}
