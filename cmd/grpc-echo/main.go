// Command grpc-echo is the proxyless gRPC workload of `make demo`: a server that answers with its version, and
// a client that calls a service through grpc-go's xDS support and prints, each interval, the share of replies
// each version gave. Both read their xDS bootstrap from GRPC_XDS_BOOTSTRAP, written by the meshd agent
// running beside them, so routing (VirtualService weights) comes from meshd.
//
//	grpc-echo server --addr 127.0.0.2:17070 --version v1
//	grpc-echo client --target xds:///echo.default.svc.cluster.local:7070
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/xds"
)

func main() {
	root := &cobra.Command{Use: "grpc-echo", Short: "proxyless gRPC echo server and client for the meshd demo", SilenceUsage: true}
	root.AddCommand(serverCommand(), clientCommand())
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

type echoServer struct {
	testgrpc.UnimplementedTestServiceServer
	version string
}

// UnaryCall answers with the server's version in the hostname field, which is what the client counts.
func (s *echoServer) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return &testgrpc.SimpleResponse{Hostname: s.version}, nil
}

func serverCommand() *cobra.Command {
	var addr, version string
	var plain bool
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Serve the echo service; an xDS-managed server unless --plain",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext()
			defer stop()
			lis, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			srv := &echoServer{version: version}
			log := slog.With("version", version, "addr", lis.Addr().String())
			type server interface {
				grpc.ServiceRegistrar
				Serve(net.Listener) error
				Stop()
			}
			var s server
			if plain {
				s = grpc.NewServer()
			} else {
				// The xDS server only serves once meshd sent its inbound listener: the serving-mode log line
				// shows the control plane is in the loop.
				xs, err := xds.NewGRPCServer(grpc.Creds(insecure.NewCredentials()), xds.ServingModeCallback(
					func(a net.Addr, args xds.ServingModeChangeArgs) {
						log.Info("serving mode changed", "mode", args.Mode.String(), "error", args.Err)
					}))
				if err != nil {
					return fmt.Errorf("xDS server (is GRPC_XDS_BOOTSTRAP set?): %w", err)
				}
				s = xs
			}
			testgrpc.RegisterTestServiceServer(s, srv)
			go func() { <-ctx.Done(); s.Stop() }()
			log.Info("echo server listening")
			return s.Serve(lis)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:17070", "listen address")
	cmd.Flags().StringVar(&version, "version", "v1", "version to answer with")
	cmd.Flags().BoolVar(&plain, "plain", false, "serve without xDS (no inbound listener from the control plane)")
	return cmd
}

func clientCommand() *cobra.Command {
	var target string
	var interval time.Duration
	var rate int
	cmd := &cobra.Command{
		Use:   "client",
		Short: "Call the echo service through xDS and print the share of replies per version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signalContext()
			defer stop()
			// Importing google.golang.org/grpc/xds registers the xds:/// resolver, configured by GRPC_XDS_BOOTSTRAP.
			conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return err
			}
			defer conn.Close()
			client := testgrpc.NewTestServiceClient(conn)
			return report(ctx, cmd.OutOrStdout(), client, interval, rate)
		},
	}
	cmd.Flags().StringVar(&target, "target", "xds:///echo.default.svc.cluster.local:7070", "xDS target")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "how often to print the shares")
	cmd.Flags().IntVar(&rate, "calls", 100, "calls per interval")
	return cmd
}

// report calls the service at a steady rate and prints one line per interval, e.g.
// "v1 80% v2 20%  (100 calls)", until ctx ends.
func report(ctx context.Context, out interface{ Write([]byte) (int, error) }, client testgrpc.TestServiceClient, interval time.Duration, calls int) error {
	tick := time.NewTicker(interval / time.Duration(calls))
	defer tick.Stop()
	counts := map[string]int{}
	failed := 0
	var lastErr error
	flushAt := time.Now().Add(interval)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		rctx, cancel := context.WithTimeout(ctx, interval)
		resp, err := client.UnaryCall(rctx, &testgrpc.SimpleRequest{}, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failed++
			lastErr = err
		} else {
			counts[resp.Hostname]++
		}
		if time.Now().Before(flushAt) {
			continue
		}
		fmt.Fprintln(out, shares(counts, failed, lastErr))
		counts, failed, lastErr, flushAt = map[string]int{}, 0, nil, time.Now().Add(interval)
	}
}

func shares(counts map[string]int, failed int, lastErr error) string {
	total := failed
	versions := make([]string, 0, len(counts))
	for v, n := range counts {
		versions = append(versions, v)
		total += n
	}
	sort.Strings(versions)
	var b strings.Builder
	for _, v := range versions {
		fmt.Fprintf(&b, "%s %3.0f%%  ", v, 100*float64(counts[v])/float64(total))
	}
	fmt.Fprintf(&b, "(%d calls", total)
	if failed > 0 {
		fmt.Fprintf(&b, ", %d failed: %v", failed, lastErr)
	}
	b.WriteString(")")
	return b.String()
}
