package imagecli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	"os/signal"
	"syscall"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// registerAttachCommands adds the commands that serve an image as a block
// device (pkg/attach). newTable calls it.
func registerAttachCommands(t *table) {
	t.register("attach", "serve an image as a loop device; prints the device", runAttach)
	t.register("detach", "detach an attached image and stop its server", runDetach)
	t.register("status", "show the device and server of an attached image", runStatus)
}

// servingProcs is the serving process's default GOMAXPROCS. Almost every
// request blocks in a system call (FUSE read/reply, O_DIRECT pread/pwrite);
// with GOMAXPROCS = cores the scheduler waits for sysmon to notice a blocked
// thread before running the next request, which halves 4 KiB IOPS on 2
// cores. Measured with bench/fio.sh: see README "Performance".
const servingProcs = 32

// runDirFlag adds --run-dir to fs.
func runDirFlag(fs *flag.FlagSet) *string {
	return fs.String("run-dir", attach.DefaultRunDir, "parent of the per-image runtime directories")
}

func runAttach(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "attach", stdio: stdio}
	u := usage{synopsis: "attach [--foreground=false] [--run-dir DIR] IMAGEDIR", nargs: 1, text: `
Attach the image directory IMAGEDIR as a loop device (/dev/loopN) and serve
it: this process holds the image, a FUSE mount of the disk and the loop
device, and answers a control socket (online snapshot, grow, detach).
Prints the device path on stdout once it is ready, then serves until
'csi-ploop image detach IMAGEDIR' or SIGINT/SIGTERM (a device that is still
mounted is not detached: unmount it first).
--foreground=false is how the CSI driver starts it, in its own session with
output to RUNDIR/<id>/serve.log: SIGHUP is ignored. --keeper-fd is how the
data plane starts it: a keeper holds its descriptors, restarts it on the
same FUSE connection if it dies, and hands it over to a new binary.
The env var CSI_PLOOP_CPUPROFILE=FILE writes a CPU profile on exit.`}
	fs := newFlags(e.name)
	fg := fs.Bool("foreground", true, "run attached to the terminal (false: started detached)")
	procs := fs.Int("gomaxprocs", servingProcs,
		"Go scheduler threads (GOMAXPROCS) of the serving process; the GOMAXPROCS env var wins")
	runDir := runDirFlag(fs)
	timeout := fs.Duration("request-timeout", attach.DefaultRequestTimeout,
		"a disk request slower than this aborts the device (I/O errors instead of a hang)")
	keeperFD := fs.Int("keeper-fd", -1, "descriptor of the keep channel to a keeper that started this process (the data plane); -1: none")
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	var keeper *unixsock.MsgConn
	if *keeperFD >= 0 {
		var err error
		if keeper, err = unixsock.FileMsgConn(os.NewFile(uintptr(*keeperFD), "keeper")); err != nil {
			return e.fail(fmt.Errorf("attach %s: keeper: %w", pos[0], err))
		}
	}
	if !*fg {
		signal.Ignore(syscall.SIGHUP)
	}
	if os.Getenv("GOMAXPROCS") == "" && *procs > 0 {
		runtime.GOMAXPROCS(*procs)
	}
	opts := attach.ServeOptions{
		RunDir:         *runDir,
		RequestTimeout: *timeout,
		Logger:         klogSlog(),
		Ready:          func(st attach.Status) { fmt.Fprintln(stdio.Stdout, st.Device) },
		Keeper:         keeper,
	}
	if err := attach.Serve(ctx, pos[0], opts); err != nil {
		return e.fail(fmt.Errorf("attach %s: %w", pos[0], err))
	}
	return ExitOK
}

func runDetach(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "detach", stdio: stdio}
	u := usage{synopsis: "detach [--run-dir DIR] IMAGEDIR", nargs: 1, text: `
Detach the loop device of IMAGEDIR and stop its serving process. Succeeds if
the image is not attached; cleans up after a serving process that died.
Refused while the device is mounted.`}
	fs := newFlags(e.name)
	runDir := runDirFlag(fs)
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	c := attach.NewClient(attach.AttachOptions{RunDir: *runDir})
	if err := c.Detach(ctx, pos[0]); err != nil {
		return e.fail(attachHint(fmt.Errorf("detach %s: %w", pos[0], err)))
	}
	return ExitOK
}

func runStatus(ctx context.Context, args []string, stdio IO) int {
	e := env{name: "status", stdio: stdio}
	u := usage{synopsis: "status [--run-dir DIR] IMAGEDIR", nargs: 1, text: `
Print, as JSON, the device, server pid, chain depth and size of the attached
image IMAGEDIR, and the progress of a merge it is running ("merge": parent,
child, done and total bytes). Fails if it is not attached.`}
	fs := newFlags(e.name)
	runDir := runDirFlag(fs)
	pos, code, ok := e.parse(fs, u, args)
	if !ok {
		return code
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := attach.NewClient(attach.AttachOptions{RunDir: *runDir}).Status(ctx, pos[0])
	if err != nil {
		return e.fail(fmt.Errorf("status %s: %w", pos[0], err))
	}
	enc := json.NewEncoder(stdio.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(st); err != nil {
		return e.fail(err)
	}
	return ExitOK
}

// attachHint adds what to do to the errors of pkg/attach.
func attachHint(err error) error {
	if errors.Is(err, attach.ErrLocked) {
		return fmt.Errorf("%w (a process holds the image but does not answer; see RUNDIR/*/serve.log)", err)
	}
	return err
}

// klogSlog is a slog.Logger writing through klog, so the serving process
// logs in the same structured format as the driver that starts it.
func klogSlog() *slog.Logger { return slog.New(logr.ToSlogHandler(klog.Background())) }
