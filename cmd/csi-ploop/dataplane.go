package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/csi-ploop/csi-ploop/pkg/attach"
	"github.com/csi-ploop/csi-ploop/pkg/dataplane"
)

const dataplaneUsage = `usage: csi-ploop dataplane COMMAND [FLAGS]

The data plane: a supervisor that starts, keeps and replaces the per-volume
serving processes, independently of the CSI driver (which it serves over
--socket; run the driver with --dataplane-socket=SOCKET and the same
--run-dir).

  run        run the supervisor in the foreground (a container, a systemd unit)
  start      start it detached, in its own session and cgroup, unless one runs; wait until ready
  stop       make it exit; the serving processes keep running and the next one adopts them
  status     print the supervisor and its volumes as JSON
  handover   DIR: hand the volume of image directory DIR to a new serving process
  attach     DIR: attach image directory DIR through the data plane; prints the device
             (detach: csi-ploop image detach --run-dir RUNDIR DIR)
`

// runDataplane dispatches "csi-ploop dataplane ...".
func runDataplane(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, dataplaneUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmds := map[string]func(context.Context, []string, io.Writer) error{
		"run": dataplaneRun, "start": dataplaneStart, "stop": dataplaneStop,
		"status": dataplaneStatus, "handover": dataplaneHandover, "attach": dataplaneAttach,
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "csi-ploop dataplane: unknown command %q\n%s", args[0], dataplaneUsage)
		return 2
	}
	err := cmd(ctx, args[1:], stdout)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "csi-ploop dataplane %s: %v\n", args[0], err)
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "csi-ploop dataplane %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

type usageError struct{ error }

// dataplaneFlags are the flags every dataplane command has.
func dataplaneFlags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("csi-ploop dataplane "+name, flag.ContinueOnError)
	socket := fs.String("socket", dataplane.DefaultSocket, "the supervisor's socket (the driver's --dataplane-socket)")
	return fs, socket
}

func parse(fs *flag.FlagSet, args []string, nargs int) ([]string, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	if fs.NArg() != nargs {
		return nil, usageError{fmt.Errorf("want %d argument(s), got %d", nargs, fs.NArg())}
	}
	return fs.Args(), nil
}

func dataplaneRun(ctx context.Context, args []string, _ io.Writer) error {
	fs, socket := dataplaneFlags("run")
	var o dataplane.Options
	var cgroup string
	fs.StringVar(&o.RunDir, "run-dir", attach.DefaultRunDir, "parent of the volumes' runtime directories (the driver's --run-dir)")
	fs.Var((*generation)(&o.Generation), "generation", "orders supervisors: a newer one takes over an older one, never the reverse (a DaemonSet passes its pod-template-generation; empty: 0)")
	fs.StringVar(&o.ReadyFile, "ready-file", "", "create this file once every serving process found at the start is kept (readiness probe)")
	fs.BoolVar(&o.ExitWhenRetired, "exit-when-retired", true, "exit once a newer supervisor took every volume over (false in a DaemonSet: wait for SIGTERM)")
	fs.StringVar(&cgroup, "cgroup", "", "first move into a cgroup of this name beside the current one on every hierarchy (dataplane start sets it)")
	fs.IntVar(&o.Restart.MaxQuickFailures, "restart-max-failures", dataplane.DefaultMaxQuickFailures, "give a volume up (EIO) after this many quick failures of its serving process in a row")
	fs.DurationVar(&o.Restart.MinUptime, "restart-min-uptime", dataplane.DefaultMinUptime, "a serving process that served this long before dying was not failing quickly")
	fs.DurationVar(&o.StartTimeout, "start-timeout", dataplane.DefaultStartTimeout, "bound on the start of one serving process")
	asInit := fs.Bool("init", false, "run the supervisor as a child and start it again if it dies, reaping orphans (a container's PID 1: a crash of the supervisor then spares the serving processes)")
	klogFlags(fs)
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	o.Socket = *socket
	o.Logger = slog.New(logr.ToSlogHandler(klog.Background()))
	if cgroup != "" {
		dirs, err := dataplane.MoveToOwnCgroup(cgroup)
		if err != nil {
			return err
		}
		o.Logger.Info("moved into the data plane's own cgroup", "cgroups", dirs)
	}
	if *asInit {
		return dataplane.Init(ctx, "/proc/self/exe", setFlags(fs, "init", "cgroup"), o.Logger)
	}
	return dataplane.New(o).Run(ctx)
}

func dataplaneStart(ctx context.Context, args []string, stdout io.Writer) error {
	fs, socket := dataplaneFlags("start")
	runDir := fs.String("run-dir", attach.DefaultRunDir, "parent of the volumes' runtime directories (the driver's --run-dir)")
	cgroup := fs.String("cgroup", "csi-ploop-dataplane", "cgroup the supervisor moves into, beside the caller's, on every hierarchy; empty: stay")
	logFile := fs.String("log-file", "", "the supervisor's log (default: dataplane.log beside the socket)")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait until the supervisor is ready")
	verbosity := fs.Int("v", 2, "the supervisor's log verbosity")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	runArgs := []string{"--socket", *socket, "--run-dir", *runDir, "--exit-when-retired=true", "-v", strconv.Itoa(*verbosity)}
	if *cgroup != "" {
		runArgs = append(runArgs, "--cgroup", *cgroup)
	}
	pid, running, err := dataplane.Start(ctx, dataplane.StartOptions{Socket: *socket, RunArgs: runArgs, LogFile: *logFile})
	if err != nil {
		return err
	}
	if running {
		fmt.Fprintf(stdout, "data plane already running (pid %d) on %s\n", pid, *socket)
	} else {
		fmt.Fprintf(stdout, "data plane started (pid %d) on %s\n", pid, *socket)
	}
	return nil
}

func dataplaneStop(ctx context.Context, args []string, stdout io.Writer) error {
	fs, socket := dataplaneFlags("stop")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pid, err := dataplane.Stop(ctx, *socket)
	if err != nil {
		return err
	}
	if pid == 0 {
		fmt.Fprintln(stdout, "no data plane running on", *socket)
	} else {
		fmt.Fprintf(stdout, "data plane (pid %d) stopped; the serving processes keep running\n", pid)
	}
	return nil
}

func dataplaneStatus(ctx context.Context, args []string, stdout io.Writer) error {
	fs, socket := dataplaneFlags("status")
	if _, err := parse(fs, args, 0); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := dataplane.NewClient(*socket, 0).Status(ctx)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(st)
}

func dataplaneHandover(ctx context.Context, args []string, stdout io.Writer) error {
	fs, socket := dataplaneFlags("handover")
	pos, err := parse(fs, args, 1)
	if err != nil {
		return err
	}
	dir, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	pid, err := dataplane.NewClient(*socket, 0).Handover(ctx, dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: handed over to serving process %d\n", dir, pid)
	return nil
}

func dataplaneAttach(ctx context.Context, args []string, stdout io.Writer) error {
	fs, socket := dataplaneFlags("attach")
	pos, err := parse(fs, args, 1)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	dp := dataplane.NewClient(*socket, 0)
	st, err := dp.Status(ctx)
	if err != nil {
		return err
	}
	dev, err := attach.NewClient(attach.AttachOptions{RunDir: st.RunDir, Launcher: dp}).Attach(ctx, pos[0])
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, dev)
	return nil
}

// setFlags are the flags set on fs's command line, as --name=value, but
// those named in except.
func setFlags(fs *flag.FlagSet, except ...string) []string {
	var out []string
	fs.Visit(func(f *flag.Flag) {
		if !slices.Contains(except, f.Name) {
			out = append(out, "--"+f.Name+"="+f.Value.String())
		}
	})
	return out
}

// klogFlags adds klog's flags (-v, ...) to fs.
func klogFlags(fs *flag.FlagSet) {
	kf := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(kf)
	kf.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
}

// generation is --generation: an integer, or empty (a DaemonSet's label
// that is missing) for 0.
type generation int64

func (g *generation) String() string { return strconv.FormatInt(int64(*g), 10) }

func (g *generation) Set(s string) error {
	if s == "" {
		*g = 0
		return nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("not an integer: %q", s)
	}
	*g = generation(n)
	return nil
}
