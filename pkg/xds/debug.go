package xds

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/pkg/model"
)

// debugForOthers are the endpoints a caller outside the control plane's namespace may read over the secure
// port, and then only about its own proxy: anything wider would show other workloads' config.
var debugForOthers = map[string]bool{"syncz": true, "config_dump": true, "adsz": true}

// sendDebug answers a debug request on either protocol. The HTTP status travels as the response's version
// (SotW) or the resource's version (Delta).
func (s *DiscoveryServer) sendDebug(con *Connection, w *watchState) error {
	code, name, body := s.debugAnswer(con, w)
	res := &anypb.Any{TypeUrl: w.TypeURL, Value: body}
	nonce, version := newNonce(), strconv.Itoa(code)
	var err error
	if con.Delta {
		err = con.sendDelta(&discovery.DeltaDiscoveryResponse{
			TypeUrl: w.TypeURL, Nonce: nonce, SystemVersionInfo: version,
			Resources: []*discovery.Resource{{Name: name, Version: version, Resource: res}},
		})
	} else {
		err = con.sendSotw(&discovery.DiscoveryResponse{TypeUrl: w.TypeURL, Nonce: nonce, VersionInfo: version, Resources: []*anypb.Any{res}})
	}
	if err != nil {
		return err
	}
	con.update(func() { w.NonceSent, w.VersionSent, w.LastSent, w.awaitingAck = nonce, version, time.Now(), true })
	return nil
}

// debugAnswer a debug request by running the HTTP debug handler in-process. Callers on the
// plaintext port can read what port 8080 serves anyway; authenticated callers outside SystemNamespace are
// limited to their own proxy.
func (s *DiscoveryServer) debugAnswer(con *Connection, w *watchState) (code int, query string, body []byte) {
	if s.opts.Debug == nil {
		return http.StatusNotFound, "", []byte("debug over xDS is not enabled")
	}
	endpoint := strings.TrimPrefix(w.TypeURL, model.DebugTypePrefix)
	if len(w.Names) > 0 {
		query = w.Names[0]
	}
	values, err := url.ParseQuery(query)
	if err != nil {
		return http.StatusBadRequest, query, []byte("bad query " + query + ": " + err.Error())
	}
	if strings.HasPrefix(endpoint, "pprof") {
		// Profiles take seconds and would hold the stream's goroutine: port 8080 serves them.
		return http.StatusNotFound, query, []byte("pprof is served on the HTTP debug port only")
	}
	if con.caller != nil && con.caller.Namespace != s.opts.SystemNamespace {
		if !debugForOthers[endpoint] {
			return http.StatusForbidden, query, fmt.Appendf(nil,
				"%s may read only syncz, config_dump and adsz about its own proxy over xDS, not %q", con.caller.Identity, endpoint)
		}
		values.Set("proxyID", con.proxy.Key())
		values.Del("push")
	}
	req := httptest.NewRequest(http.MethodGet, "/debug/"+endpoint+"?"+values.Encode(), nil)
	rec := httptest.NewRecorder()
	s.opts.Debug.ServeHTTP(rec, req)
	return rec.Code, query, rec.Body.Bytes()
}
