// Command discovery is meshd's control plane, started like istiod's pilot-discovery:
//
//	discovery discovery --configDir samples/bookinfo
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/meshd/meshd/internal/logging"
	"github.com/meshd/meshd/pkg/bootstrap"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "discovery",
		Short:         "meshd: an istiod-compatible service mesh control plane",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w\nrun '%s --help' for the accepted flags", err, c.CommandPath())
	})
	root.AddCommand(newDiscoveryCommand(), newVersionCommand())
	return root
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run:   func(c *cobra.Command, _ []string) { fmt.Fprintln(c.OutOrStdout(), "meshd discovery", version) },
	}
}

func newDiscoveryCommand() *cobra.Command {
	args, envErr := bootstrap.DefaultArgs()
	var logLevel string
	// Flags istiod accepts that meshd does not act on (yet): accepted so that existing manifests start
	// unchanged, and logged when set.
	ignored := map[string]*string{}
	cmd := &cobra.Command{
		Use:   "discovery",
		Short: "Start the xDS discovery server",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if envErr != nil {
				return envErr
			}
			level, err := logging.ParseLevel(logLevel)
			if err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			slog.SetDefault(log)
			// client-go logs through klog, a process global: route it to the same structured log, once.
			klog.SetSlogLogger(log.With("component", "client-go"))
			for name := range ignored {
				if c.Flags().Changed(name) {
					log.Info("flag accepted for istiod compatibility and not used by meshd", "flag", name)
				}
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			s, err := bootstrap.NewServer(ctx, args, log)
			if err != nil {
				return err
			}
			<-ctx.Done()
			log.Info("shutting down")
			s.Wait()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&args.GRPCAddr, "grpcAddr", args.GRPCAddr, "plaintext gRPC (ADS) address")
	f.StringVar(&args.HTTPAddr, "httpAddr", args.HTTPAddr, "HTTP address for /ready and /debug")
	f.StringVar(&args.MonitoringAddr, "monitoringAddr", args.MonitoringAddr, "HTTP address for /metrics")
	f.StringVar(&args.SecureGRPCAddr, "secureGRPCAddr", args.SecureGRPCAddr, "mTLS gRPC (ADS and CA) address")
	f.StringVar(&args.HTTPSAddr, "httpsAddr", args.HTTPSAddr, "HTTPS address for the injection and validation webhooks")
	f.StringVar(&args.ConfigDir, "configDir", args.ConfigDir, "directory of Kubernetes and Istio YAML to serve (watched)")
	f.StringVar(&args.CACertsDir, "caCertsDir", args.CACertsDir, "plugged-in CA certificates (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), used when present")
	f.StringVar(&args.CASelfSignedDir, "caSelfSignedDir", args.CASelfSignedDir, "file mode: where the generated self-signed root is kept (0700)")
	f.StringVar(&args.Kubeconfig, "kubeconfig", args.Kubeconfig, "kubeconfig for the Kubernetes registry")
	f.StringVar(&args.Domain, "domain", args.Domain, "DNS domain suffix of the cluster")
	f.StringVar(&args.MeshConfigFile, "meshConfig", args.MeshConfigFile, "mesh config file (defaults are used when it does not exist)")
	f.StringVar(&args.ClusterID, "clusterID", args.ClusterID, "ID of the cluster this control plane runs in")
	f.DurationVar(&args.KeepaliveMaxServerConnectionAge, "keepaliveMaxServerConnectionAge", args.KeepaliveMaxServerConnectionAge,
		"maximum age of a client connection before it is asked to reconnect (spreads proxies across replicas)")
	f.DurationVar(&args.KeepaliveInterval, "keepaliveInterval", args.KeepaliveInterval, "gRPC keepalive ping interval")
	f.DurationVar(&args.KeepaliveTimeout, "keepaliveTimeout", args.KeepaliveTimeout, "gRPC keepalive ping timeout")
	f.DurationVar(&args.Debounce.After, "debounceAfter", args.Debounce.After, "quiet period before a push (PILOT_DEBOUNCE_AFTER)")
	f.DurationVar(&args.Debounce.Max, "debounceMax", args.Debounce.Max, "maximum delay of a change (PILOT_DEBOUNCE_MAX)")
	f.IntVar(&args.PushThrottle, "pushThrottle", args.PushThrottle, "proxies pushed to concurrently (PILOT_PUSH_THROTTLE)")
	f.StringVar(&logLevel, "log_output_level", "default:info", "log level per scope, e.g. default:info,ads:debug")
	for _, name := range []string{"log_as_json", "log_caller", "log_stacktrace_level", "log_target", "log_rotate",
		"log_rotate_max_age", "log_rotate_max_size", "log_rotate_max_backups", "registries", "clusterRegistriesNamespace",
		"resync", "ctrlz_port", "ctrlz_address", "caCertFile", "tlsCertFile", "tlsKeyFile", "networksConfig", "profile",
		"plugins", "vklog", "meshConfigMapName"} {
		ignored[name] = f.String(name, "", "accepted for istiod compatibility; not used")
	}
	f.Lookup("log_as_json").NoOptDefVal = "true"
	f.Lookup("profile").NoOptDefVal = "true"
	return cmd
}
