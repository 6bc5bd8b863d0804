package xds

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/meshd/meshd/pkg/model"
)

// Metric names and labels follow istiod's, so existing dashboards and alerts keep working.
var (
	xdsClients = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pilot_xds",
		Help: "Number of endpoints connected to this pilot using XDS.",
	}, []string{"version"})

	xdsPushes = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "pilot_xds_pushes",
		Help: "Pilot build and send errors for lds, rds, cds and eds.",
	}, []string{"type"})

	xdsRejects = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "pilot_total_xds_rejects",
		Help: "Total number of XDS responses from pilot rejected by proxy.",
	}, []string{"type"})

	xdsExpiredNonce = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "pilot_xds_expired_nonce",
		Help: "Total number of XDS requests with an expired nonce.",
	}, []string{"type"})

	pushTriggers = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "pilot_push_triggers",
		Help: "Total number of times a push was triggered, labeled by reason for the push.",
	}, []string{"type"})

	inboundUpdates = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "pilot_inbound_updates",
		Help: "Total number of updates received by pilot.",
	}, []string{"type"})

	servicesGauge = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "pilot_services",
		Help: "Total services known to pilot.",
	})

	endpointsGauge = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "pilot_endpoints",
		Help: "Total endpoints known to pilot (meshd: all endpoints of the current push).",
	})

	convergenceTime = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "pilot_proxy_convergence_time",
		Help:    "Delay in seconds between config change and a proxy receiving all required configuration.",
		Buckets: []float64{.1, .5, 1, 3, 5, 10, 20, 30},
	})

	queueTime = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "pilot_proxy_queue_time",
		Help:    "Time in seconds, a proxy is in the push queue before being dequeued.",
		Buckets: []float64{.1, .5, 1, 3, 5, 10, 20, 30},
	})

	pushTime = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pilot_xds_push_time",
		Help:    "Total time in seconds Pilot takes to push lds, rds, cds and eds.",
		Buckets: []float64{.01, .1, 1, 3, 5, 10, 20, 30},
	}, []string{"type"})

	pushContextBuildTime = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "pilot_pushcontext_init_seconds",
		Help:    "Total time in seconds Pilot takes to init pushContext.",
		Buckets: []float64{.001, .01, .1, .5, 1, 3, 5},
	})

	debounceTime = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "pilot_debounce_time",
		Help:    "Delay in seconds between the first config enters debouncing and the merged push request is pushed into the push queue.",
		Buckets: []float64{.01, .1, 1, 3, 5, 10, 20, 30},
	})

	configSize = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pilot_xds_config_size_bytes",
		Help:    "Distribution of configuration sizes pushed to clients",
		Buckets: []float64{1, 10000, 1000000, 4000000, 10000000, 40000000},
	}, []string{"type"})

	xdsAuthzFailures = promauto.NewCounter(prometheus.CounterOpts{
		Name: "pilot_xds_auth_failures",
		Help: "Streams refused because the authenticated caller asked for another workload's config.",
	})

	generationErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "pilot_xds_push_context_errors",
		Help: "Number of errors (timeouts) initiating push context or generating config.",
	}, []string{"type"})
)

// Series that dashboards and alerts query exist from the start, at zero.
func init() {
	for _, t := range []string{"cds", "eds", "lds", "rds"} {
		xdsPushes.WithLabelValues(t)
		xdsRejects.WithLabelValues(t)
		xdsExpiredNonce.WithLabelValues(t)
	}
	for _, r := range []model.TriggerReason{model.ReasonEndpointUpdate, model.ReasonConfigUpdate, model.ReasonServiceUpdate,
		model.ReasonProxyUpdate, model.ReasonGlobalUpdate, model.ReasonDebug} {
		pushTriggers.WithLabelValues(string(r))
	}
}
