package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/pkg/agent/xdsproxy"
	"github.com/meshd/meshd/pkg/model"
)

// xdsProxyCollector exposes the XDS proxy's counts under Istio's agent metric names, read at scrape time.
type xdsProxyCollector struct{ p *xdsproxy.Proxy }

var (
	xdsResponsesDesc = prometheus.NewDesc("istio_agent_xds_proxy_responses",
		"Responses forwarded from the control plane to the proxy, by type.", []string{"type"}, nil)
	xdsAcksDesc = prometheus.NewDesc("istio_agent_xds_proxy_acks",
		"Responses the proxy accepted, by type.", []string{"type"}, nil)
	xdsNacksDesc = prometheus.NewDesc("istio_agent_xds_proxy_nacks",
		"Responses the proxy rejected, by type.", []string{"type"}, nil)
	xdsStreamsDesc = prometheus.NewDesc("istio_agent_xds_proxy_streams",
		"Open proxy streams (each with its own stream to the control plane).", nil, nil)
	xdsUpstreamDesc = prometheus.NewDesc("istio_agent_xds_proxy_upstream_ready",
		"1 when the connection to the control plane is ready.", nil, nil)
)

func (c xdsProxyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{xdsResponsesDesc, xdsAcksDesc, xdsNacksDesc, xdsStreamsDesc, xdsUpstreamDesc} {
		ch <- d
	}
}

func (c xdsProxyCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.p.Status()
	for typeURL, ts := range st.Types {
		short := model.ShortType(typeURL)
		ch <- prometheus.MustNewConstMetric(xdsResponsesDesc, prometheus.CounterValue, float64(ts.Responses), short)
		ch <- prometheus.MustNewConstMetric(xdsAcksDesc, prometheus.CounterValue, float64(ts.ACKs), short)
		ch <- prometheus.MustNewConstMetric(xdsNacksDesc, prometheus.CounterValue, float64(ts.NACKs), short)
	}
	ch <- prometheus.MustNewConstMetric(xdsStreamsDesc, prometheus.GaugeValue, float64(st.ActiveStreams))
	ready := 0.0
	if st.State == "READY" {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(xdsUpstreamDesc, prometheus.GaugeValue, ready)
}
