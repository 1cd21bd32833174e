// Command rawserve serves a raw file as the flat file of a blockmap mount,
// for bench/blockmap-ab.sh. It uses only the API that pkg/blockmap had
// before pkg/fuse (Mount, FilePath, Close), so the same source builds
// against both and the benchmark compares the FUSE layers alone.
//
// The backing file is opened O_DIRECT like pkg/image's deltas; a buffer the
// FUSE layer hands over that is not page aligned is bounced through an
// aligned one, as pkg/image does, and counted.
//
// usage: rawserve -backing FILE -mnt DIR   (prints the flat file's path,
// serves until SIGINT/SIGTERM, then prints the bounce counts on stderr)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/csi-ploop/csi-ploop/pkg/blockmap"
)

const align = 4096

type rawDisk struct {
	f        *os.File
	size     int64
	pool     sync.Pool
	bounced  atomic.Int64
	requests atomic.Int64
}

func aligned(p []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(p)))%align == 0
}

// bounce returns an aligned buffer of at least n bytes (up to 1 MiB pooled).
func (d *rawDisk) bounce(n int) *[]byte {
	if v := d.pool.Get(); v != nil && cap(*v.(*[]byte)) >= n {
		return v.(*[]byte)
	}
	b := make([]byte, max(n, 1<<20)+align)
	off := (align - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%align)) % align
	b = b[off : off+max(n, 1<<20)]
	return &b
}

func (d *rawDisk) ReadAt(p []byte, off int64) (int, error) {
	d.requests.Add(1)
	if aligned(p) {
		return d.f.ReadAt(p, off)
	}
	d.bounced.Add(1)
	b := d.bounce(len(p))
	defer d.pool.Put(b)
	n, err := d.f.ReadAt((*b)[:len(p)], off)
	copy(p, (*b)[:n])
	return n, err
}

func (d *rawDisk) WriteAt(p []byte, off int64) (int, error) {
	d.requests.Add(1)
	if aligned(p) {
		return d.f.WriteAt(p, off)
	}
	d.bounced.Add(1)
	b := d.bounce(len(p))
	defer d.pool.Put(b)
	copy(*b, p)
	return d.f.WriteAt((*b)[:len(p)], off)
}

func (d *rawDisk) Flush() error { return d.f.Sync() }

func (d *rawDisk) Discard(off, length int64) error {
	return syscall.Fallocate(int(d.f.Fd()), 0x3, off, length) // PUNCH_HOLE|KEEP_SIZE
}

func (d *rawDisk) Size() int64 { return d.size }

func main() {
	backing := flag.String("backing", "", "raw file to serve")
	mnt := flag.String("mnt", "", "mount directory")
	flag.Parse()
	if *backing == "" || *mnt == "" {
		flag.Usage()
		os.Exit(2)
	}
	f, err := os.OpenFile(*backing, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	st, err := f.Stat()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	d := &rawDisk{f: f, size: st.Size()}
	s, err := blockmap.Mount(context.Background(), *mnt, d, blockmap.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(s.FilePath())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	fmt.Fprintf(os.Stderr, "requests %d, bounced (unaligned buffer) %d\n", d.requests.Load(), d.bounced.Load())
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
