#!/usr/bin/env bash
# `make demo`: meshd's control plane in file mode on samples/grpc-echo, two proxyless gRPC echo servers
# (v1 on 127.0.0.2, v2 on 127.0.0.3) and a client, each beside its own agent, all on loopback. The client prints
# the share of replies per version every second; edit the weights in samples/grpc-echo/routes.yaml and watch
# the shares follow. Ctrl-C stops everything.
#
# DEMO_SECONDS=N stops the demo after N seconds (for scripted runs).
set -euo pipefail

BIN=${BIN:-bin}
CONFIG_DIR=${CONFIG_DIR:-samples/grpc-echo}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/meshd-demo.XXXXXX")
PIDS=()

cleanup() {
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Discovery on Istio's ports, plaintext ADS only: the agents here have no Kubernetes token to authenticate to
# the CA with, so they run without workload certificates (PILOT_CERT_PROVIDER=none).
DISCOVERY=127.0.0.1:15010
"$BIN/discovery" discovery --configDir "$CONFIG_DIR" --meshConfig samples/mesh.yaml \
	--grpcAddr "$DISCOVERY" --httpAddr 127.0.0.1:8080 --monitoringAddr 127.0.0.1:15014 \
	--secureGRPCAddr "" --caSelfSignedDir "$WORK/ca" >"$WORK/discovery.log" 2>&1 &
PIDS+=($!)

ready() {
	local url=$1 what=$2
	for _ in $(seq 1 100); do
		if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "$what did not become ready; its log:" >&2
	cat "$WORK"/*.log >&2
	exit 1
}
ready http://127.0.0.1:8080/ready "discovery"

# agent NAME IP STATUS_PORT: an agent for pod NAME (namespace default) in its own directory, in proxyless mode,
# with its status port (readiness: curl 127.0.0.1:STATUS_PORT/healthz/ready) moved off 15020 so that three
# agents fit on one machine.
agent() {
	local name=$1 ip=$2 status=$3
	mkdir -p "$WORK/$name"
	(
		cd "$WORK/$name"
		POD_NAME=$name POD_NAMESPACE=default INSTANCE_IP=$ip SERVICE_ACCOUNT=echo \
			ISTIO_META_GENERATOR=grpc PILOT_CERT_PROVIDER=none PROXY_XDS_DEBUG_VIA_AGENT=false \
			PROXY_CONFIG="{\"discoveryAddress\": \"$DISCOVERY\", \"statusPort\": $status}" \
			exec "$OLDPWD/$BIN/agent" proxy sidecar >"$WORK/agent-$name.log" 2>&1
	) &
	PIDS+=($!)
	for _ in $(seq 1 100); do
		[ -s "$WORK/$name/etc/istio/proxy/grpc-bootstrap.json" ] && return 0
		sleep 0.1
	done
	echo "agent $name wrote no gRPC bootstrap; its log:" >&2
	cat "$WORK/agent-$name.log" >&2
	exit 1
}

for v in v1 v2; do
	ip=127.0.0.2
	[ $v = v2 ] && ip=127.0.0.3
	agent "echo-$v" $ip $([ $v = v1 ] && echo 15120 || echo 15220)
	GRPC_XDS_BOOTSTRAP="$WORK/echo-$v/etc/istio/proxy/grpc-bootstrap.json" \
		"$BIN/grpc-echo" server --addr $ip:17070 --version $v >"$WORK/echo-$v.log" 2>&1 &
	PIDS+=($!)
done
agent client 127.0.0.4 15320

cat <<EOF
meshd demo: discovery on $DISCOVERY (try: curl 127.0.0.1:8080/debug/syncz), echo v1 and v2, a client.
Edit the weights in $CONFIG_DIR/routes.yaml: the shares below follow within seconds. Ctrl-C stops.
Logs: $WORK/*.log
EOF
GRPC_XDS_BOOTSTRAP="$WORK/client/etc/istio/proxy/grpc-bootstrap.json" \
	"$BIN/grpc-echo" client --target xds:///echo.default.svc.cluster.local:7070 &
CLIENT=$!
PIDS+=($CLIENT)
if [ -n "${DEMO_SECONDS:-}" ]; then
	sleep "$DEMO_SECONDS"
else
	wait $CLIENT
fi
