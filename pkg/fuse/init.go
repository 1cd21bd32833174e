package fuse

import (
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Errors of the INIT exchange and of adopting a connection.
var (
	// ErrNotInit: the first request of a connection was not FUSE_INIT
	// (Init was called on a connection that is already initialised).
	ErrNotInit = errors.New("fuse: first request is not INIT")
	// ErrProtocol: the kernel's protocol version is not usable.
	ErrProtocol = errors.New("fuse: unsupported protocol version")
	// ErrInvalidState: an InitState fails validation.
	ErrInvalidState = errors.New("fuse: invalid INIT state")
)

// InitState is what the INIT exchange settled for a connection. The
// kernel sends INIT once per connection, so a server that adopts a
// connection (hand-over, restart after a crash) must be given this value
// by whoever ran the exchange; it serialises to JSON for that.
type InitState struct {
	// Minor is the negotiated protocol minor (major is always 7).
	Minor uint32 `json:"minor"`
	// KernelMinor and KernelFlags are what the kernel offered: they say
	// what this kernel can do beyond what was negotiated (FUSE_NOTIFY_RESEND
	// needs KernelMinor >= 40).
	KernelMinor uint32 `json:"kernelMinor"`
	KernelFlags uint64 `json:"kernelFlags"`
	// Flags is what the server accepted (flags | flags2<<32): the kernel
	// acts on these.
	Flags               uint64 `json:"flags"`
	MaxReadahead        uint32 `json:"maxReadahead"`
	MaxWrite            uint32 `json:"maxWrite"`
	MaxPages            uint16 `json:"maxPages"`
	MaxBackground       uint16 `json:"maxBackground"`
	CongestionThreshold uint16 `json:"congestionThreshold"`
	TimeGran            uint32 `json:"timeGran"`
	// RequestTimeout is the kernel's per-request timeout in seconds
	// (FUSE_REQUEST_TIMEOUT), 0 if none was asked for. It is latched for
	// the life of the connection and keeps counting across hand-overs.
	RequestTimeout uint16 `json:"requestTimeout"`
}

// Validate checks a state that came from elsewhere (another process)
// before a server trusts it for buffer sizes.
func (s InitState) Validate() error {
	switch {
	case s.Minor < MinMinor || s.Minor > OurMinor:
		return fmt.Errorf("%w: minor %d", ErrInvalidState, s.Minor)
	case s.KernelMinor < s.Minor:
		return fmt.Errorf("%w: kernel minor %d below negotiated %d", ErrInvalidState, s.KernelMinor, s.Minor)
	case s.Flags&^s.KernelFlags != 0:
		return fmt.Errorf("%w: flags %#x not offered by the kernel (%#x)", ErrInvalidState, s.Flags, s.KernelFlags)
	case s.MaxWrite < pageSize || s.MaxWrite > MaxMaxWrite:
		return fmt.Errorf("%w: max_write %d", ErrInvalidState, s.MaxWrite)
	case s.MaxPages == 0 || int(s.MaxPages)*pageSize > MaxMaxWrite:
		return fmt.Errorf("%w: max_pages %d", ErrInvalidState, s.MaxPages)
	case s.Flags&FlagOverIOUring != 0:
		return fmt.Errorf("%w: io_uring was negotiated; only the classic transport exists", ErrInvalidState)
	}
	return nil
}

// CanResend reports whether the kernel takes FUSE_NOTIFY_RESEND (Linux
// 6.9, protocol 7.40).
func (s InitState) CanResend() bool {
	return s.KernelMinor >= 40 || s.KernelFlags&FlagHasResend != 0
}

// MaxPayload is the largest READ or WRITE payload of the connection, the
// room a transport needs per request besides the headers.
func (s InitState) MaxPayload() int {
	return max(int(s.MaxWrite), int(s.MaxPages)*pageSize, MinReadBuffer)
}

// InitOptions are what a server asks for in INIT.
type InitOptions struct {
	// MaxWrite is the largest READ/WRITE request: rounded down to pages,
	// 0 means MaxMaxWrite, clamped to [4 KiB, MaxMaxWrite].
	MaxWrite int
	// MaxBackground is how many async requests (loop's direct I/O) the
	// kernel keeps in flight; 0 means 64 (the kernel's default is 12).
	MaxBackground int
	// CongestionThreshold: 0 means 3/4 of MaxBackground.
	CongestionThreshold int
	// RequestTimeout asks the kernel to abort the connection when a
	// request stays unanswered this long (rounded up to seconds; the
	// kernel checks every 15 s and uses at least 15 s). 0: no timeout.
	RequestTimeout time.Duration
}

// DefaultMaxBackground is InitOptions.MaxBackground's default.
const DefaultMaxBackground = 64

// wanted is what this server asks for, masked by the kernel's offer:
// ASYNC_DIO (without it loop's async direct I/O is served one request at a
// time), BIG_WRITES and MAX_PAGES (1 MiB requests), ASYNC_READ and
// PARALLEL_DIROPS (concurrency).
const wanted = FlagAsyncRead | FlagBigWrites | FlagAsyncDIO | FlagParallelDirops | FlagMaxPages

// Negotiate computes the INIT reply's settings for the kernel's offer.
func Negotiate(in InitIn, opts InitOptions) (InitState, error) {
	if in.Major != KernelVersion || in.Minor < MinMinor {
		return InitState{}, fmt.Errorf("%w: kernel offers %d.%d, need %d.%d or later",
			ErrProtocol, in.Major, in.Minor, KernelVersion, MinMinor)
	}
	maxWrite := opts.MaxWrite
	if maxWrite <= 0 || maxWrite > MaxMaxWrite {
		maxWrite = MaxMaxWrite
	}
	maxWrite = max(maxWrite&^(pageSize-1), pageSize)
	bg := opts.MaxBackground
	if bg <= 0 {
		bg = DefaultMaxBackground
	}
	bg = min(bg, math.MaxUint16)
	ct := opts.CongestionThreshold
	if ct <= 0 {
		ct = bg * 3 / 4
	}
	st := InitState{
		Minor:               min(in.Minor, OurMinor),
		KernelMinor:         in.Minor,
		KernelFlags:         in.Flags,
		Flags:               wanted & in.Flags,
		MaxReadahead:        in.MaxReadahead,
		MaxWrite:            uint32(maxWrite),
		MaxPages:            uint16(maxWrite / pageSize),
		MaxBackground:       uint16(bg),
		CongestionThreshold: uint16(min(ct, bg)),
		TimeGran:            1,
	}
	if opts.RequestTimeout > 0 {
		if in.Flags&FlagRequestTimeout == 0 {
			return InitState{}, fmt.Errorf("%w: the kernel (7.%d) has no FUSE_REQUEST_TIMEOUT", ErrProtocol, in.Minor)
		}
		secs := (opts.RequestTimeout + time.Second - 1) / time.Second
		st.RequestTimeout = uint16(min(secs, math.MaxUint16))
		st.Flags |= FlagRequestTimeout
	}
	if st.Flags&flagsNeedingInitExt != 0 {
		st.Flags |= FlagInitExt & in.Flags
	}
	return st, nil
}

// encodeInitOut writes the INIT reply argument for st.
func encodeInitOut(b []byte, st *InitState) {
	clear(b[:initOutSize])
	le.PutUint32(b[0:], KernelVersion)
	le.PutUint32(b[4:], st.Minor)
	le.PutUint32(b[8:], st.MaxReadahead)
	le.PutUint32(b[12:], uint32(st.Flags))
	le.PutUint16(b[16:], st.MaxBackground)
	le.PutUint16(b[18:], st.CongestionThreshold)
	le.PutUint32(b[20:], st.MaxWrite)
	le.PutUint32(b[24:], st.TimeGran)
	le.PutUint16(b[28:], st.MaxPages)
	// map_alignment @30 stays 0.
	le.PutUint32(b[32:], uint32(st.Flags>>32))
	// max_stack_depth @36 stays 0 (no passthrough).
	le.PutUint16(b[40:], st.RequestTimeout)
}

// Init answers the FUSE_INIT of a freshly mounted connection: it reads the
// first request from dev (blocking until it comes; Mount makes the kernel
// send it at once), negotiates and replies. Call it once per connection;
// a connection that is already initialised never sends INIT again (then
// the first request is answered EIO and ErrNotInit returned).
func Init(dev *os.File, opts InitOptions) (InitState, error) {
	buf := make([]byte, MinReadBuffer+WriteHeaderSize+MaxMaxWrite)
	var n int
	var err error
	for {
		n, err = unix.Read(int(dev.Fd()), buf)
		if err != unix.EINTR && err != unix.ENOENT {
			break
		}
	}
	if err != nil {
		return InitState{}, fmt.Errorf("fuse: read INIT: %w", err)
	}
	var r Request
	perr := ParseRequest(buf[:n], &r)
	var rep Reply
	rep.reset(r.Header.Unique)
	var st InitState
	switch {
	case perr != nil:
		err = perr
	case r.Header.Opcode != OpInit:
		err = fmt.Errorf("%w: opcode %d", ErrNotInit, r.Header.Opcode)
	default:
		st, err = Negotiate(r.Init, opts)
	}
	if err != nil {
		rep.Fail(unix.EIO)
		if r.Header.Opcode == OpInit {
			rep.Fail(unix.EPROTO)
		}
	} else {
		encodeInitOut(rep.arg(initOutSize), &st)
	}
	if n >= 16 && NeedsReply(r.Header.Opcode) {
		head, _, _ := rep.Wire()
		if _, werr := unix.Write(int(dev.Fd()), head); werr != nil && err == nil {
			err = fmt.Errorf("fuse: reply to INIT: %w", werr)
		}
	}
	return st, err
}
