package attach

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/csi-ploop/csi-ploop/pkg/unixsock"
)

// ErrNoKeep: the serving process predates keepers (control protocol
// before version 2): it cannot be kept or handed over, only used and
// detached.
var ErrNoKeep = errors.New("attach: the serving process cannot be kept (it predates the data plane)")

// Kept is a server a keeper took over: its keep channel, what it reported
// and duplicates of its descriptors (the caller owns all of them).
type Kept struct {
	Conn  *unixsock.MsgConn
	State KeepState
	Files KeepFiles
}

// Keep makes the caller the keeper of the serving process of image
// directory dir (absolute) under runDir. Without takeover it is refused
// with ErrKept while another keeper holds the server; with takeover the
// server says goodbye to that keeper (ByeHandingOver) and is the caller's,
// to hand over to a successor. keeper names the caller in the server's log.
func Keep(ctx context.Context, runDir, dir string, takeover bool, keeper string) (Kept, error) {
	rt := runtimeDir(runDir, dir)
	op := opKeep
	if takeover {
		op = opHandover
	}
	c, err := unixsock.Dial(ctx, filepath.Join(rt, socketName))
	if errors.Is(err, unixsock.ErrNoListener) {
		return Kept{}, fmt.Errorf("%w: %s: %w", ErrNotAttached, dir, err)
	}
	if err != nil {
		return Kept{}, fmt.Errorf("attach: %s %s: %w", op, dir, err)
	}
	conn := unixsock.NewMsgConn(c)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	k, err := keepOn(conn, op, keeper)
	if err != nil {
		conn.Close()
		return Kept{}, fmt.Errorf("attach: %s %s: %w", op, dir, unixsock.CtxErr(ctx, err))
	}
	return k, nil
}

func keepOn(conn *unixsock.MsgConn, op, keeper string) (Kept, error) {
	if err := conn.Send(request{Version: opVersion(op), Op: op, Keeper: keeper}); err != nil {
		return Kept{}, err
	}
	var resp response
	files, err := conn.Recv(&resp)
	if err != nil {
		return Kept{}, fmt.Errorf("no answer: %w", err)
	}
	if resp.Version < 2 {
		unixsock.CloseFiles(files)
		return Kept{}, fmt.Errorf("%w (protocol %d): %s", ErrNoKeep, resp.Version, resp.Error)
	}
	if !resp.OK {
		unixsock.CloseFiles(files)
		return Kept{}, remoteError(resp)
	}
	kf := KeepFilesOf(files)
	if resp.Keep == nil || kf.Dev == nil || kf.Root == nil || kf.Ctl == nil {
		kf.Close()
		return Kept{}, fmt.Errorf("the server's answer lacks its state or descriptors")
	}
	return Kept{Conn: conn, State: *resp.Keep, Files: kf}, nil
}

// RuntimeDir is the runtime directory of image directory dir (absolute)
// under runDir.
func RuntimeDir(runDir, dir string) string { return runtimeDir(runDir, dir) }
