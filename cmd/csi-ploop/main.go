// Command csi-ploop is the ploop CSI driver, as "csi-ploop image ..." the
// operator's tool for ploop images, and as "csi-ploop dataplane ..." the
// data plane that keeps the volumes' serving processes. No logic lives
// here: arguments are dispatched to pkg/imagecli, pkg/dataplane or the
// driver (driver.go).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/csi-ploop/csi-ploop/pkg/imagecli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// run dispatches "image ..." to the image tool, "dataplane ..." to the
// data plane (dataplane.go) and anything else to the driver.
func run(ctx context.Context, args []string) int {
	if len(args) > 0 && args[0] == "image" {
		return imagecli.Main(ctx, args[1:], os.Stdout, os.Stderr)
	}
	if len(args) > 0 && args[0] == "dataplane" {
		return runDataplane(ctx, args[1:], os.Stdout, os.Stderr)
	}
	return runDriver(ctx, args)
}
