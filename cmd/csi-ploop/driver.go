package main

import (
	"context"
	"fmt"
	"os"
)

// runDriver runs the CSI driver with args (everything after the program
// name that is not "image ...") and returns the exit code.
//
// Placeholder: the driver engineer replaces this file with the real wiring
// (flags -> config -> pkg/driver).
func runDriver(ctx context.Context, args []string) int {
	fmt.Fprint(os.Stderr, `usage:
  csi-ploop image COMMAND ...   operate on ploop images (run 'csi-ploop image --help')
  csi-ploop [DRIVER FLAGS]      run the CSI driver

csi-ploop: driver not built yet: the driver mode is wired in cmd/csi-ploop/driver.go
`)
	return 2
}
