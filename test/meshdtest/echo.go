package meshdtest

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// EchoPlatform is file-mode YAML for an echo Service (ClusterIP 10.96.7.7, port 7070 "grpc") with two Pods, v1
// on 127.0.0.2 and v2 on 127.0.0.3, and their subsets. Format it with the two Pods' container ports.
const EchoPlatform = `apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: default
spec:
  clusterIP: 10.96.7.7
  selector:
    app: echo
  ports:
  - name: grpc
    port: 7070
    targetPort: grpc
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-v1
  namespace: default
  labels: {app: echo, version: v1}
spec:
  containers:
  - name: app
    image: echo
    ports:
    - name: grpc
      containerPort: %d
status:
  phase: Running
  podIP: 127.0.0.2
  conditions:
  - type: Ready
    status: "True"
---
apiVersion: v1
kind: Pod
metadata:
  name: echo-v2
  namespace: default
  labels: {app: echo, version: v2}
spec:
  containers:
  - name: app
    image: echo
    ports:
    - name: grpc
      containerPort: %d
status:
  phase: Running
  podIP: 127.0.0.3
  conditions:
  - type: Ready
    status: "True"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: default
spec:
  host: echo
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
`

// StartEchoBackend serves a plain grpc-go echo backend on addr until the test ends and returns its port. It
// answers UnaryCall with version in Hostname.
func StartEchoBackend(t testing.TB, addr, version string) int {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, &echoBackend{version: version})
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().(*net.TCPAddr).Port
}

type echoBackend struct {
	testgrpc.UnimplementedTestServiceServer
	version string
}

func (b *echoBackend) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return &testgrpc.SimpleResponse{Hostname: b.version}, nil
}
