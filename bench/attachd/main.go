// Command attachd is a stand-in for "csi-ploop image attach|snapshot|detach"
// used by bench/fio.sh while the csi-ploop binary does not route those
// commands yet. It calls pkg/attach directly.
//
//	attachd serve [--run-dir D] DIR      prints the device, serves until SIGINT/SIGTERM
//	attachd snapshot [--run-dir D] DIR   online snapshot, prints the frozen GUID
//	attachd detach [--run-dir D] DIR
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	if len(args) < 1 {
		fmt.Fprintln(os.Stderr, "usage: attachd serve|snapshot|detach [--run-dir D] DIR")
		return 2
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	runDir := fs.String("run-dir", attach.DefaultRunDir, "parent of the runtime directories")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 {
		return 2
	}
	dir := fs.Arg(0)
	c := attach.NewClient(attach.AttachOptions{RunDir: *runDir})
	var err error
	switch args[0] {
	case "serve":
		err = attach.Serve(ctx, dir, attach.ServeOptions{
			RunDir: *runDir,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
			Ready:  func(st attach.Status) { fmt.Println(st.Device) },
		})
	case "snapshot":
		var guid string
		if guid, err = c.Snapshot(ctx, dir, ""); err == nil {
			fmt.Println(guid)
		}
	case "detach":
		err = c.Detach(ctx, dir)
	default:
		err = fmt.Errorf("unknown command %q", args[0])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "attachd:", err)
		return 1
	}
	return 0
}
