package fuse

import (
	"context"
	"errors"
)

// ErrConnEnded: the kernel ended the connection (unmount, abort through
// fusectl, request timeout): reading /dev/fuse returns ENODEV or
// ECONNABORTED.
var ErrConnEnded = errors.New("fuse: connection ended")

// Handler answers requests. Its methods are called concurrently, one call
// per request; req and rep belong to the calling transport and are valid
// only during the call.
type Handler interface {
	// Handle answers a request that parsed.
	Handle(req *Request, rep *Reply)
	// Malformed answers a request that did not parse (err matches
	// ErrMalformed); req holds what could be decoded.
	Malformed(req *Request, err error, rep *Reply)
}

// Transport moves requests from the kernel to a Handler and replies back.
// The classic transport reads and writes /dev/fuse; a FUSE-over-io_uring
// transport would register ring entries instead and hand the same Request
// and Reply to the same Handler. Its requests arrive with the header, the
// op arguments and the payload (WRITE data, names) in separate buffers: it
// decodes the header and arguments with the per-opcode decoders of
// ParseRequest and points Request.Data/Name at the payload; Reply.Buf is
// the entry's payload buffer. FORGET, INTERRUPT and notifications stay on
// /dev/fuse.
type Transport interface {
	// Start begins serving h and returns at once. A transport is started
	// once.
	Start(h Handler) error
	// Done is closed when the transport has stopped: every reader has
	// returned, after Drain or because the connection ended.
	Done() <-chan struct{}
	// Err tells, once Done is closed, why: nil after Drain, ErrConnEnded
	// when the kernel ended the connection, another error when reading
	// the device failed.
	Err() error
	// Drain stops taking requests for a hand-over: every reader answers
	// the request it holds and returns instead of reading again. Readers
	// asleep in the kernel cannot be recalled; only a new request wakes
	// one, so Drain keeps calling wake (which must cause one request on
	// the connection, e.g. statfs on the mount) until every reader has
	// returned. It never returns nil with a reader left: a reader that
	// died while asleep in read(2) would take a request with it that no
	// one answers. If ctx ends first, the transport resumes serving and
	// ctx's error is returned. The connection itself stays up for the
	// successor.
	Drain(ctx context.Context, wake func() error) error
}
