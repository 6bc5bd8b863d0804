// Command xdsload measures a discovery server under many Envoy-like sidecars.
//
//	xdsload mesh --services 1000 --out /tmp/mesh          # write a synthetic mesh to serve
//	bin/discovery discovery --configDir /tmp/mesh &
//	xdsload run --addr localhost:15010 --proxies 1000 --meshServices 1000
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/pkg/loadtest"
)

func main() {
	root := &cobra.Command{Use: "xdsload", Short: "Load and measure an xDS discovery server", SilenceUsage: true}
	root.AddCommand(meshCommand(), runCommand())
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}

func meshCommand() *cobra.Command {
	var out string
	var services, pods int
	cmd := &cobra.Command{
		Use:   "mesh",
		Short: "Write a synthetic mesh (Services, Pods, DestinationRules, VirtualServices) as YAML",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ips, err := loadtest.WriteMesh(out, services, pods)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "wrote %d services with %d pods each to %s (%d pods in ns0)\n", services, pods, out, len(ips))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory to write (created)")
	cmd.Flags().IntVar(&services, "services", 1000, "number of services")
	cmd.Flags().IntVar(&pods, "pods", 3, "pods (versions) per service")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func runCommand() *cobra.Command {
	var opts loadtest.Options
	var meshServices, meshPods int
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Connect simulated sidecars and report time to a complete config",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if meshServices > 0 {
				// Impersonate the generated mesh's ns0 pods, so each proxy also gets its inbound config.
				opts.PodIPs = loadtest.MeshPodIPs(meshServices, meshPods)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			res, err := loadtest.Run(ctx, opts)
			if res != nil {
				fmt.Fprint(c.OutOrStdout(), res.String())
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Addr, "addr", "localhost:15010", "plaintext ADS address")
	f.IntVar(&opts.Proxies, "proxies", 100, "simulated sidecars, one gRPC connection each")
	f.IntVar(&opts.ConnectRate, "rate", 0, "connections per second (0: all at once)")
	f.StringVar(&opts.Namespace, "namespace", "ns0", "namespace of the simulated sidecars")
	f.DurationVar(&opts.Hold, "hold", 0, "keep proxies connected this long after they are complete, reporting pushes seen")
	f.DurationVar(&opts.Timeout, "timeout", 5*time.Minute, "give up when not every proxy is complete by then")
	f.IntVar(&meshServices, "meshServices", 0, "services of the `xdsload mesh` the server serves; proxies then use its ns0 pod IPs")
	f.IntVar(&meshPods, "meshPods", 3, "pods per service of that mesh")
	return cmd
}
