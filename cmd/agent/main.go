// Command agent is meshd's sidecar agent, started like Istio's pilot-agent:
//
//	agent proxy sidecar --domain $(POD_NAMESPACE).svc.cluster.local --proxyLogLevel=warning ...
//	agent proxy router ...
//	agent istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020
//	agent wait
//
// It exits with the proxy's exit status when the proxy exits on its own.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/internal/logging"
	"github.com/meshd/meshd/pkg/agent"
	"github.com/meshd/meshd/pkg/agent/config"
	"github.com/meshd/meshd/pkg/agent/iptables"
	"github.com/meshd/meshd/pkg/agent/proxy"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	err := newRootCommand().Execute()
	var exit *proxy.ExitError
	switch {
	case errors.As(err, &exit):
		os.Exit(exit.Code)
	case err != nil:
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "agent",
		Short:         "meshd's sidecar agent: proxy bootstrap, xDS proxy, certificates, health, DNS and traffic capture",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newProxyCommand(), newIptablesCommand(), newWaitCommand(), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(c *cobra.Command, _ []string) { fmt.Fprintln(c.OutOrStdout(), "meshd agent", version) },
	})
	return root
}

func newProxyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "proxy sidecar|router [flags]",
		Short: "Run the agent and its proxy (Envoy), or only the agent for proxyless gRPC (ISTIO_META_GENERATOR=grpc)",
		// pilot-agent's flags are parsed by the agent's config package, with the environment they go with.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.FromEnv(os.Getenv, config.Args{
				Argv:     append([]string{"proxy"}, args...),
				Environ:  os.Environ(),
				ReadFile: os.ReadFile,
				NotExist: os.IsNotExist,
			})
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "agent:", err)
				return err
			}
			level, err := logging.ParseLevel(cfg.LogOutputLevel)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "agent:", err)
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			a, err := agent.New(agent.Options{Config: cfg, Environ: os.Environ(), Logger: log})
			if err != nil {
				log.Error("agent", "error", err)
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			err = a.Run(ctx)
			var exit *proxy.ExitError
			switch {
			case errors.As(err, &exit):
				log.Error("proxy exited", "status", exit.Code)
			case err != nil:
				log.Error("agent failed", "error", err)
			default:
				log.Info("agent stopped")
			}
			return err
		},
	}
}

func newIptablesCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "istio-iptables [flags]",
		Short: "Set up the pod's traffic capture (istio-iptables flags; --dry-run prints the rules)",
		// istio-iptables's short and long flags are parsed by the iptables package.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				if a == "-h" || a == "--help" {
					return cmd.Help()
				}
			}
			c, err := iptables.Parse(args)
			if err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "istio-iptables:", err)
				return err
			}
			if err := c.Run(cmd.Context(), cmd.OutOrStdout()); err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), "istio-iptables:", err)
				return err
			}
			return nil
		},
	}
}

// newWaitCommand is pilot-agent's `wait`: it polls the proxy's readiness until it is ready or the timeout
// passes, for application containers that must not start before their proxy.
func newWaitCommand() *cobra.Command {
	var url string
	var timeoutSeconds, periodMillis, requestTimeoutMillis int
	cmd := &cobra.Command{
		Use:   "wait",
		Short: "Wait until the proxy is ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client := &http.Client{Timeout: time.Duration(requestTimeoutMillis) * time.Millisecond}
			deadline := time.Now().Add(time.Duration(timeoutSeconds) * time.Second)
			var last error
			for {
				resp, err := client.Get(url)
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						fmt.Fprintln(cmd.OutOrStdout(), "proxy is ready")
						return nil
					}
					err = fmt.Errorf("%s: %s", url, resp.Status)
				}
				last = err
				if time.Now().After(deadline) {
					err := fmt.Errorf("proxy not ready after %ds: %w", timeoutSeconds, last)
					fmt.Fprintln(cmd.ErrOrStderr(), err)
					return err
				}
				time.Sleep(time.Duration(periodMillis) * time.Millisecond)
			}
		},
	}
	cmd.Flags().StringVar(&url, "url", "http://localhost:15021/healthz/ready", "readiness URL to poll")
	cmd.Flags().IntVar(&timeoutSeconds, "timeoutSeconds", 60, "how long to wait")
	cmd.Flags().IntVar(&periodMillis, "periodMillis", 500, "time between attempts")
	cmd.Flags().IntVar(&requestTimeoutMillis, "requestTimeoutMillis", 500, "timeout of each attempt")
	return cmd
}
