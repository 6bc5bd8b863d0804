package status

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metric sources, as the source label of istio_agent_scrape_failures_total.
const (
	sourceEnvoy = "envoy"
	sourceAgent = "agent"
	sourceApp   = "application"
)

// scrapeTimeout bounds each source; Prometheus' own scrape timeout defaults to 10s.
const scrapeTimeout = 5 * time.Second

// maxScrapeBytes stops a runaway source from exhausting the agent's memory.
const maxScrapeBytes = 64 << 20

// appMetrics is ISTIO_PROMETHEUS_ANNOTATIONS: the app's prometheus.io/* annotations, which the injector moved
// here when it pointed them at the agent.
type appMetrics struct {
	Scrape string `json:"scrape"`
	Path   string `json:"path"`
	Port   string `json:"port"`
}

// scraper serves /stats/prometheus: proxy, agent and app metrics as one valid text exposition.
type scraper struct {
	log    *slog.Logger
	envoy  string // URL, "" if none
	app    string // URL, "" if not scraped
	agent  prometheus.Gatherers
	fails  *prometheus.CounterVec
	client *http.Client
}

func newScraper(opts Options, log *slog.Logger) (*scraper, error) {
	s := &scraper{log: log, client: &http.Client{Timeout: scrapeTimeout}}
	if opts.PrometheusAddr != "" {
		s.envoy = "http://" + opts.PrometheusAddr + "/stats/prometheus"
	}
	if opts.AppMetrics != "" {
		var am appMetrics
		if err := json.Unmarshal([]byte(opts.AppMetrics), &am); err != nil {
			return nil, fmt.Errorf("ISTIO_PROMETHEUS_ANNOTATIONS: %w", err)
		}
		if scrape, _ := strconv.ParseBool(am.Scrape); scrape {
			port, err := strconv.ParseUint(am.Port, 10, 16)
			if err != nil || port == 0 {
				return nil, fmt.Errorf("ISTIO_PROMETHEUS_ANNOTATIONS: port %q is not a port number", am.Port)
			}
			if am.Path == "" {
				am.Path = "/metrics"
			}
			s.app = "http://" + net.JoinHostPort("127.0.0.1", am.Port) + am.Path
		}
	}
	// A private registry: the agent's registry may be the process default, and a second registration of
	// the same name there would panic.
	own := prometheus.NewRegistry()
	s.fails = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "istio_agent_scrape_failures_total",
		Help: "Scrapes of a metrics source merged into /stats/prometheus that failed and were left out.",
	}, []string{"source"})
	own.MustRegister(s.fails)
	// Zero series for the configured sources, so alerts can use rate() before the first failure.
	s.fails.WithLabelValues(sourceAgent)
	if s.envoy != "" {
		s.fails.WithLabelValues(sourceEnvoy)
	}
	if s.app != "" {
		s.fails.WithLabelValues(sourceApp)
	}
	s.agent = prometheus.Gatherers{own}
	if opts.AgentMetrics != nil {
		s.agent = append(s.agent, opts.AgentMetrics)
	}
	return s, nil
}

// handle merges the sources in a fixed order. A family name seen in an earlier source wins: repeating a family
// would make the whole exposition invalid (an app built with client_golang exports the same go_* families as
// the agent). A failing source is left out, so the others still reach Prometheus.
func (s *scraper) handle(w http.ResponseWriter, r *http.Request) {
	type result struct {
		source string
		fams   []*dto.MetricFamily
		err    error
	}
	results := []*result{{source: sourceEnvoy}, {source: sourceAgent}, {source: sourceApp}}
	var wg sync.WaitGroup
	for _, res := range results {
		wg.Go(func() {
			switch res.source {
			case sourceEnvoy:
				if s.envoy != "" {
					res.fams, res.err = s.fetch(r.Context(), s.envoy)
				}
			case sourceAgent:
				res.fams, res.err = s.agent.Gather()
			case sourceApp:
				if s.app != "" {
					res.fams, res.err = s.fetch(r.Context(), s.app)
				}
			}
		})
	}
	wg.Wait()

	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	seen := map[string]string{}
	for _, res := range results {
		if res.err != nil {
			s.fails.WithLabelValues(res.source).Inc()
			s.log.Warn("metrics source left out of the scrape", "source", res.source, "err", res.err)
			// Gatherers returns what it could gather along with the error; a fetch failure returns nothing.
		}
		for _, f := range res.fams {
			if first, dup := seen[f.GetName()]; dup {
				s.log.Debug("duplicate metric family dropped", "name", f.GetName(), "source", res.source, "kept", first)
				continue
			}
			seen[f.GetName()] = res.source
			if err := enc.Encode(f); err != nil {
				s.log.Warn("metric family not encodable", "name", f.GetName(), "source", res.source, "err", err)
			}
		}
	}
	w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	w.Write(buf.Bytes())
}

// fetch scrapes one text-format endpoint and parses it, so a malformed source cannot corrupt the merged output.
func (s *scraper) fetch(ctx context.Context, url string) ([]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	// Only the classic text format: it is what the parser reads and what Envoy serves.
	req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, maxScrapeBytes))
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	fams := make([]*dto.MetricFamily, 0, len(byName))
	for _, n := range slices.Sorted(maps.Keys(byName)) {
		fams = append(fams, byName[n])
	}
	return fams, nil
}
