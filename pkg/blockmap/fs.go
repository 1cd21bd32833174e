package blockmap

import (
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Inode numbers: the FUSE root and the single flat file. Both are static,
// so Forget needs no bookkeeping.
const (
	rootIno = fuse.FUSE_ROOT_ID
	fileIno = rootIno + 1
)

// cacheTTL is how long the kernel may trust entries and attributes. Only
// this server changes them, and Resized invalidates the file's attributes
// explicitly, so a long TTL saves GETATTR round trips.
const cacheTTL = time.Hour

// rawFS serves one directory holding one regular file through the
// low-level go-fuse API. The fs tree API (fs.Inode) would add a node
// table, locking and allocations per request for no benefit here.
type rawFS struct {
	fuse.RawFileSystem // ENOSYS for everything not implemented below

	srv  *Server
	name string
}

func (f *rawFS) String() string { return "blockmap" }

func (f *rawFS) Lookup(_ <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if h.NodeId != rootIno || name != f.name {
		return fuse.ENOENT
	}
	out.NodeId = fileIno
	out.Generation = 1
	out.SetEntryTimeout(cacheTTL)
	out.SetAttrTimeout(cacheTTL)
	f.fileAttr(&out.Attr)
	return fuse.OK
}

func (f *rawFS) GetAttr(_ <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	out.SetTimeout(cacheTTL)
	switch in.NodeId {
	case rootIno:
		dirAttr(&out.Attr)
	case fileIno:
		f.fileAttr(&out.Attr)
	default:
		return fuse.ENOENT
	}
	return fuse.OK
}

// SetAttr accepts mode/owner/time changes as no-ops (tools like cp -p or
// touch should not fail) but refuses to change the size: the disk's size
// changes only through the Disk owner and Resized, like a block device,
// whose ftruncate also fails with EINVAL.
func (f *rawFS) SetAttr(c <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if sz, ok := in.GetSize(); ok && in.NodeId == fileIno && int64(sz) != f.srv.disk.Size() {
		return fuse.EINVAL
	}
	return f.GetAttr(c, &fuse.GetAttrIn{InHeader: in.InHeader}, out)
}

func (f *rawFS) fileAttr(a *fuse.Attr) {
	size := f.srv.disk.Size()
	a.Ino = fileIno
	a.Mode = fuse.S_IFREG | 0o600
	a.Nlink = 1
	a.Size = uint64(size)
	a.Blocks = uint64(size+511) / 512
	a.Blksize = 4096
}

func dirAttr(a *fuse.Attr) {
	a.Ino = rootIno
	a.Mode = fuse.S_IFDIR | 0o700
	a.Nlink = 2
}

func (f *rawFS) OpenDir(_ <-chan struct{}, in *fuse.OpenIn, _ *fuse.OpenOut) fuse.Status {
	if in.NodeId != rootIno {
		return fuse.ENOTDIR
	}
	return fuse.OK
}

// ReadDir lists the file so that `ls` on the mount helps debugging. Offsets
// are entry indexes; the kernel passes back the last one it consumed.
func (f *rawFS) ReadDir(_ <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	entries := [...]fuse.DirEntry{
		{Name: ".", Mode: fuse.S_IFDIR, Ino: rootIno, Off: 1},
		{Name: "..", Mode: fuse.S_IFDIR, Ino: rootIno, Off: 2},
		{Name: f.name, Mode: fuse.S_IFREG, Ino: fileIno, Off: 3},
	}
	for i := in.Offset; i < uint64(len(entries)); i++ {
		if !out.AddDirEntry(entries[i]) {
			break
		}
	}
	return fuse.OK
}

func (f *rawFS) ReleaseDir(*fuse.ReleaseIn) {}

// Open turns on the flags that make loop-on-FUSE fast: DIRECT_IO keeps the
// kernel page cache out (loop and the filesystem above it cache already),
// PARALLEL_DIRECT_WRITES lets the kernel send writes to one inode
// concurrently instead of serializing them on the inode lock.
func (f *rawFS) Open(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.NodeId != fileIno {
		return fuse.EISDIR
	}
	out.OpenFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
	return fuse.OK
}

func (f *rawFS) Release(<-chan struct{}, *fuse.ReleaseIn) {}

func (f *rawFS) StatFs(_ <-chan struct{}, _ *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = uint64(f.srv.disk.Size()) / 4096
	out.Files = 2
	out.NameLen = 255
	return fuse.OK
}

func (f *rawFS) Read(_ <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	n, st := f.srv.read(buf[:min(len(buf), int(in.Size))], int64(in.Offset))
	if !st.Ok() {
		return nil, st
	}
	r := f.srv.results.Get().(*readResult)
	r.data = buf[:n]
	return r, fuse.OK
}

// readResult is a pooled fuse.ReadResult: fuse.ReadResultData allocates one
// per read. go-fuse calls Done after copying the data out (splice is off).
type readResult struct {
	data []byte
	pool *sync.Pool
}

func (r *readResult) Bytes([]byte) ([]byte, fuse.Status) { return r.data, fuse.OK }
func (r *readResult) Size() int                          { return len(r.data) }
func (r *readResult) Done() {
	r.data = nil
	r.pool.Put(r)
}

func (f *rawFS) Write(_ <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	n, st := f.srv.write(data, int64(in.Offset))
	return uint32(n), st
}

// Flush (every close of a descriptor) and Fsync both make the disk durable:
// loop detaching closes its file, and that must not lose data either.
func (f *rawFS) Flush(<-chan struct{}, *fuse.FlushIn) fuse.Status { return f.srv.flush() }
func (f *rawFS) Fsync(<-chan struct{}, *fuse.FsyncIn) fuse.Status { return f.srv.flush() }

func (f *rawFS) Fallocate(_ <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	return f.srv.fallocate(int64(in.Offset), int64(in.Length), in.Mode)
}
