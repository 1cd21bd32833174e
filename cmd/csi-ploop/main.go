// Command csi-ploop is the ploop CSI driver and, as "csi-ploop image ...",
// the operator's tool for ploop images. No logic lives here: arguments are
// dispatched to pkg/imagecli or to the driver (driver.go).
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

// run dispatches "image ..." to the image tool and anything else to the driver.
func run(ctx context.Context, args []string) int {
	if len(args) > 0 && args[0] == "image" {
		return imagecli.Main(ctx, args[1:], os.Stdout, os.Stderr)
	}
	return runDriver(ctx, args)
}
