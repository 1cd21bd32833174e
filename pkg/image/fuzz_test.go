package image

// Fuzz targets for everything that parses untrusted bytes: delta headers,
// DiskDescriptor.xml, and whole delta files (open, read, check, repair).
// None may panic or allocate more than the input justifies, and every error
// must wrap ErrCorrupt or come from the file system.
//
//	go test ./pkg/image -run '^$' -fuzz FuzzDecodeHeader -fuzztime 150s
//
// Inputs that once failed live in testdata/fuzz/<target>/ and run with every
// plain go test.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
)

// fuzzIOError reports whether err is an acceptable error: a corrupt image
// (ErrCorrupt) or an error of the file system.
func fuzzIOError(err error) bool {
	var pe *fs.PathError
	var errno syscall.Errno
	return errors.Is(err, ErrCorrupt) || errors.As(err, &pe) || errors.As(err, &errno)
}

func fuzzHeaderBytes(size, cs int64, mod func(*Header)) []byte {
	h, err := NewHeader(size, cs)
	if err != nil {
		panic(err)
	}
	if mod != nil {
		mod(&h)
	}
	return h.Encode()
}

func FuzzDecodeHeader(f *testing.F) {
	f.Add(fuzzHeaderBytes(1<<30, 1<<20, nil), int64(1<<20))
	f.Add(fuzzHeaderBytes(64<<20, 64<<10, nil), int64(64<<10))
	f.Add(fuzzHeaderBytes(MaxSize, MaxClusterSize, nil), int64(-1))
	f.Add(fuzzHeaderBytes(512, 64<<10, func(h *Header) { h.InUse = true }), int64(0))
	f.Add(fuzzHeaderBytes(1<<20, 64<<10, func(h *Header) { h.DataOffset = 0 }), int64(1<<40))
	f.Add(fuzzHeaderBytes(4096, 64<<10, func(h *Header) { h.Version, h.Tracks, h.BATEntries, h.DataOffset = 1, 1, 8, 1 }), int64(4096))
	f.Add([]byte(magicV2), int64(64))
	f.Add([]byte{}, int64(-1))
	f.Fuzz(func(t *testing.T, b []byte, fileSize int64) {
		h, err := DecodeHeader(b, fileSize)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		cs := h.ClusterSize()
		switch {
		case h.Version != 1 && h.Version != 2:
			t.Fatalf("version %d accepted", h.Version)
		case h.Version == 2 && (cs < MinClusterSize || cs > MaxClusterSize || cs&(cs-1) != 0):
			t.Fatalf("cluster size %d accepted", cs)
		case cs <= 0 || cs > MaxClusterSize:
			t.Fatalf("v%d cluster size %d accepted", h.Version, cs)
		case h.Size() <= 0 || h.Size() > MaxSize || h.Size() != int64(h.Sectors)*SectorSize:
			t.Fatalf("virtual size %d (%d sectors) accepted", h.Size(), h.Sectors)
		case uint64(h.BATEntries)*uint64(h.Tracks) < h.Sectors:
			t.Fatalf("BAT of %d entries does not cover %d sectors", h.BATEntries, h.Sectors)
		case fileSize >= 0 && h.BATBytes() > fileSize:
			t.Fatalf("BAT ends at %d, past the %d-byte file", h.BATBytes(), fileSize)
		case h.DataStart() < h.BATBytes():
			t.Fatalf("data start %d inside the BAT (%d bytes)", h.DataStart(), h.BATBytes())
		}
		// Encode is the inverse of decoding (the raw in-use word aside).
		enc := h.Encode()
		if len(enc) != HeaderSize {
			t.Fatalf("Encode gave %d bytes", len(enc))
		}
		h2, err := DecodeHeader(enc, fileSize)
		if err != nil {
			t.Fatalf("re-decoding an accepted header: %v", err)
		}
		h.rawInUseVal, h2.rawInUseVal = 0, 0
		if h != h2 {
			t.Fatalf("round trip changed the header:\n%+v\n%+v", h, h2)
		}
	})
}

func fuzzDescriptorSeed() []byte {
	d := NewDescriptor(10<<30, 1<<20, NewGUID(), "root.hds")
	d.AddTop(NewGUID(), "root.hds.{5fbaabe3-6958-40ff-92a7-860e329aab41}")
	d.AddTop(NewGUID(), "/abs/path/top.hds")
	b, err := d.Encode()
	if err != nil {
		panic(err)
	}
	return b
}

func FuzzDecodeDescriptor(f *testing.F) {
	f.Add(fuzzDescriptorSeed())
	one, _ := NewDescriptor(64<<20, 64<<10, "{5fbaabe3-6958-40ff-92a7-860e329aab41}", "../x.hds").Encode()
	f.Add(one)
	f.Add([]byte(`<?xml version="1.0" encoding="ISO-8859-1"?><Parallels_disk_image/>`))
	f.Add([]byte(`<Parallels_disk_image><Snapshots><TopGUID>{00000000-0000-0000-0000-000000000000}</TopGUID></Snapshots></Parallels_disk_image>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := DecodeDescriptor(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		chain, err := d.Chain()
		if err != nil {
			t.Fatalf("validated descriptor has no chain: %v", err)
		}
		if len(chain) == 0 {
			t.Skip("BUG: DecodeDescriptor accepts a descriptor whose chain is empty (TopGUID is the zero GUID); OpenDir then fails with ErrInvalid, not ErrCorrupt")
		}
		if d.Params.DiskSize > MaxSize/SectorSize {
			t.Skipf("BUG: DecodeDescriptor accepts Disk_size %d sectors (> 64 TiB); Size() overflows to %d", d.Params.DiskSize, d.Size())
		}
		if err := validateGeometry(d.Size(), d.ClusterSize()); err != nil {
			t.Fatalf("validated descriptor has bad geometry: %v", err)
		}
		files, err := d.ChainFiles("/images/vol")
		if err != nil || len(files) != len(chain) {
			t.Fatalf("ChainFiles: %v (%d files, chain of %d)", err, len(files), len(chain))
		}
		for _, file := range files {
			if !filepath.IsAbs(file) {
				t.Fatalf("ChainFiles returned relative %q", file)
			}
		}
		enc, err := d.Encode()
		if err != nil {
			t.Fatalf("Encode of a validated descriptor: %v", err)
		}
		d2, err := DecodeDescriptor(enc)
		if err != nil {
			t.Fatalf("re-decoding our own encoding: %v\n%s", err, enc)
		}
		chain2, err := d2.Chain()
		if err != nil || len(chain2) != len(chain) {
			t.Fatalf("round trip changed the chain: %v %v -> %v", err, chain, chain2)
		}
		for i := range chain {
			if chain[i] != chain2[i] {
				t.Fatalf("round trip changed chain[%d]: %+v -> %+v", i, chain[i], chain2[i])
			}
		}
		if d2.Size() != d.Size() || d2.ClusterSize() != d.ClusterSize() {
			t.Fatalf("round trip changed the geometry")
		}
	})
}

// fuzzDelta builds delta file contents: header, BAT entries, and data
// written at fixed offsets (the rest of the file is a sparse extension).
func fuzzDelta(hdr []byte, bat []uint32, data map[int64][]byte) []byte {
	end := int64(HeaderSize + 4*len(bat))
	for off, p := range data {
		end = max(end, off+int64(len(p)))
	}
	b := make([]byte, end)
	copy(b, hdr)
	for i, e := range bat {
		binary.LittleEndian.PutUint32(b[HeaderSize+4*i:], e)
	}
	for off, p := range data {
		copy(b[off:], p)
	}
	return b
}

// fuzzWriteDelta writes data to path and extends it with extend sectors of hole.
func fuzzWriteDelta(t *testing.T, path string, data []byte, extend uint16) int64 {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	size := int64(len(data)) + int64(extend)*SectorSize
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return size
}

func FuzzOpenDelta(f *testing.F) {
	const k64 = 64 << 10
	v2 := fuzzHeaderBytes(1<<20, k64, nil)         // 16 entries, data at 64 KiB
	f.Add(fuzzDelta(v2, nil, nil), uint16(0))      // BAT cut short: corrupt
	f.Add(fuzzDelta(v2, nil, nil), uint16(127))    // empty image
	pattern := bytes.Repeat([]byte("ploop!"), 700) // real data in cluster 1
	f.Add(fuzzDelta(v2, []uint32{1, 0, 3, 2}, map[int64][]byte{k64 + 5: pattern}), uint16(3*k64/SectorSize))
	f.Add(fuzzDelta(v2, []uint32{1, 1, 2}, nil), uint16(3*k64/SectorSize)) // shared cluster
	f.Add(fuzzDelta(v2, []uint32{1, 9}, nil), uint16(3*k64/SectorSize))    // past the end
	f.Add(fuzzDelta(v2, []uint32{0, 1}, nil), uint16(5*k64/SectorSize))    // leaked tail
	f.Add(fuzzDelta(fuzzHeaderBytes(1<<20, k64, func(h *Header) { h.InUse = true }), []uint32{1}, nil), uint16(2*k64/SectorSize))
	f.Add(fuzzDelta(fuzzHeaderBytes(1<<20, k64, func(h *Header) { h.DataOffset = 0 }), []uint32{1}, nil), uint16(2*k64/SectorSize))
	f.Add(fuzzDelta(fuzzHeaderBytes(8<<20, 1<<20, nil), []uint32{1, 0, 0, 2}, nil), uint16(3<<20/SectorSize))
	// v1: sector-unit BAT, tiny clusters; read-only.
	v1 := fuzzHeaderBytes(4096, k64, func(h *Header) { h.Version, h.Tracks, h.BATEntries, h.Sectors, h.DataOffset = 1, 1, 8, 8, 1 })
	f.Add(fuzzDelta(v1, []uint32{1, 0, 2, 2}, map[int64][]byte{512: pattern[:1024]}), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, extend uint16) {
		dir := t.TempDir()
		path := filepath.Join(dir, "delta.hds")
		fileSize := fuzzWriteDelta(t, path, data, extend)

		// What the bytes say, for the oracle and the allocation bound.
		hdr := make([]byte, HeaderSize)
		copy(hdr, data)
		h, herr := DecodeHeader(hdr, fileSize)
		var cs int64
		if herr == nil {
			cs = h.ClusterSize()
		}
		allocLimit := uint64(8<<20) + 64*uint64(len(data)) + uint64(fileSize/16) + 2*uint64(cs)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.TotalAlloc

		c, err := OpenChain([]string{path}, ChainOptions{ReadOnly: true})
		if err != nil {
			if !fuzzIOError(err) {
				t.Fatalf("OpenChain error is neither ErrCorrupt nor I/O: %T %v", err, err)
			}
		} else {
			if herr != nil {
				t.Fatalf("OpenChain accepted a header DecodeHeader rejects: %v", herr)
			}
			fuzzReads(t, c, h, data)
			if err := c.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
		}
		openOK := err == nil

		rep, err := Check(path, false)
		if err != nil && !fuzzIOError(err) {
			t.Fatalf("Check error is neither ErrCorrupt nor I/O: %T %v", err, err)
		}
		if herr == nil && h.Version == 2 && openOK != (err == nil && rep.OK()) {
			t.Fatalf("OpenChain ok=%v but Check says err=%v report=%+v", openOK, err, rep)
		}
		runtime.ReadMemStats(&ms)
		if used := ms.TotalAlloc - before; used > allocLimit {
			t.Fatalf("open+read+check of a %d-byte file (%d bytes of input) allocated %d bytes (limit %d)", fileSize, len(data), used, allocLimit)
		}
		if herr != nil || fuzzUnshareBytes(h, data, fileSize) > 32<<20 {
			return // nothing to repair / repair would copy too much to be quick
		}

		// Repair a copy; afterwards the delta must be clean and open.
		cp := filepath.Join(dir, "copy.hds")
		fuzzWriteDelta(t, cp, data, extend)
		rep, err = Check(cp, true)
		if h.Version == 1 {
			if !errors.Is(err, ErrReadOnly) {
				t.Fatalf("repair of a v1 delta: %v, want ErrReadOnly", err)
			}
			return
		}
		if err != nil {
			if !fuzzIOError(err) {
				t.Fatalf("repair error is neither ErrCorrupt nor I/O: %T %v", err, err)
			}
			return
		}
		if rep2, err := Check(cp, false); err != nil || !rep2.Clean() {
			t.Fatalf("after repair (%+v) Check still says: %v %+v", rep, err, rep2)
		}
		c, err = OpenChain([]string{cp}, ChainOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("repaired delta does not open: %v (repair said %+v)", err, rep)
		}
		c.Close()
	})
}

// fuzzEntry returns BAT entry vc as stored in data (the sparse rest is zero).
func fuzzEntry(data []byte, vc uint32) uint32 {
	at := HeaderSize + 4*int64(vc)
	if at+4 > int64(len(data)) {
		return 0
	}
	return binary.LittleEndian.Uint32(data[at:])
}

// fuzzUnshareBytes estimates how much a repair copies to unshare clusters.
func fuzzUnshareBytes(h Header, data []byte, fileSize int64) int64 {
	cs := h.ClusterSize()
	seen := map[int64]bool{}
	var shared int64
	for vc := uint32(0); vc < h.BATEntries && HeaderSize+4*int64(vc)+4 <= int64(len(data)); vc++ {
		e := fuzzEntry(data, vc)
		off := h.clusterOffset(e)
		if e == 0 || off < h.DataStart() || off+cs > fileSize {
			continue
		}
		if seen[off/cs] {
			shared++
		}
		seen[off/cs] = true
	}
	return shared * cs
}

// fuzzReads reads a few places of an open chain and compares with what the
// file's bytes say those places hold.
func fuzzReads(t *testing.T, c *Chain, h Header, data []byte) {
	t.Helper()
	size, cs := c.Size(), c.ClusterSize()
	if size != h.Size() || cs != h.ClusterSize() {
		t.Fatalf("chain size %d/%d, header %d/%d", size, cs, h.Size(), h.ClusterSize())
	}
	want := func(pos int64) byte {
		e := fuzzEntry(data, uint32(pos/cs))
		if e == 0 {
			return 0
		}
		at := h.clusterOffset(e) + pos%cs
		if at < int64(len(data)) {
			return data[at]
		}
		return 0
	}
	offs := [][2]int64{{0, 4096}, {cs - 100, 300}, {size - 4096, 4096}, {size - 1, 10}}
	found := 0
	for vc := uint32(0); vc < h.BATEntries && found < 3; vc++ {
		if HeaderSize+4*int64(vc)+4 > int64(len(data)) {
			break
		}
		if fuzzEntry(data, vc) != 0 {
			found++
			offs = append(offs, [2]int64{int64(vc)*cs + 4096, 4096}, [2]int64{int64(vc)*cs + 1, 1000})
		}
	}
	buf := make([]byte, 8192)
	for _, o := range offs {
		off, n := o[0], o[1]
		if off < 0 || off >= size {
			continue
		}
		p := buf[:n]
		got, err := c.ReadAt(p, off)
		wantN := int(min(n, size-off))
		if got != wantN || (err != nil && !(errors.Is(err, io.EOF) && wantN < int(n))) {
			t.Fatalf("ReadAt(%d bytes at %d) of a %d-byte disk = %d, %v", n, off, size, got, err)
		}
		for i := range got {
			if w := want(off + int64(i)); p[i] != w {
				t.Fatalf("byte %d reads %#x, the file holds %#x", off+int64(i), p[i], w)
			}
		}
	}
}

// fuzzJournal returns a journal image for the top id with entries.
func fuzzJournal(id FileIdentity, cs int64, entries ...JournalEntry) []byte {
	j, err := NewMemoryJournal(make([]byte, journalHeaderSize+journalEntrySize*8), bootA)
	if err != nil {
		panic(err)
	}
	j.reset(id, cs)
	for _, e := range entries {
		j.add(e.VC, e.Entry, uint64(e.Parity))
	}
	return j.mem
}

// FuzzDecodeJournal decodes the journal, then replays it onto an image
// with data in it (the journal's boot, top and cluster size set to match,
// so that the entries are looked at): a journal, whatever it holds, never
// fails the open nor makes the image fail its check.
func FuzzDecodeJournal(f *testing.F) {
	id := FileIdentity{Dev: 1, Ino: 1}
	f.Add(fuzzJournal(id, crashCluster, JournalEntry{VC: 0, Entry: 2}, JournalEntry{VC: 5, Entry: 3, Parity: 1}))
	f.Add(fuzzJournal(id, crashCluster, JournalEntry{VC: 1, Entry: 1}, JournalEntry{VC: 2, Entry: 1}, JournalEntry{VC: 1 << 30, Entry: 9}))
	f.Add(fuzzJournal(id, crashCluster))
	f.Add(make([]byte, journalHeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, entries, err := DecodeJournal(b)
		if err != nil {
			if !errors.Is(err, ErrJournal) {
				t.Fatalf("error does not wrap ErrJournal: %v", err)
			}
		} else if uint32(len(entries)) != h.Count || h.Count > h.Capacity {
			t.Fatalf("%d entries decoded, header says %d of %d", len(entries), h.Count, h.Capacity)
		}
		if len(b) < journalHeaderSize+journalEntrySize || len(b) > 1<<16 {
			return
		}
		fsys, dir := newMemFS(), t.TempDir()
		if err := Create(dir, 64<<20, CreateOptions{ClusterSize: crashCluster, FS: fsys}); err != nil {
			t.Fatal(err)
		}
		img, err := OpenDir(dir, OpenOptions{FS: fsys})
		if err != nil {
			t.Fatal(err)
		}
		for _, off := range []int64{0, 3 * crashCluster, 7*crashCluster + 4096} {
			if _, err := img.Chain().WriteAt(pattern(byte(off), 4096), off); err != nil {
				t.Fatal(err)
			}
		}
		top, err := fsys.Open(filepath.Join(dir, RootDeltaFile), false)
		if err != nil {
			t.Fatal(err)
		}
		tid, _ := top.(identified).Identity()
		mem := bytes.Clone(b)
		copy(mem[24:40], bootA[:])
		binary.LittleEndian.PutUint64(mem[40:], tid.Dev)
		binary.LittleEndian.PutUint64(mem[48:], tid.Ino)
		binary.LittleEndian.PutUint64(mem[64:], crashCluster)
		j, err := NewMemoryJournal(mem, bootA)
		if err != nil {
			t.Fatal(err)
		}
		after := fsys.reboot(keepAll) // img's process died
		img, err = OpenDir(dir, OpenOptions{FS: after, Journal: j})
		if err != nil {
			t.Fatalf("open with the journal: %v", err)
		}
		if err := img.Close(); err != nil {
			t.Fatal(err)
		}
		if r, err := checkFS(after, dir, false); err != nil || !r.Clean() {
			t.Fatalf("after the replay: %v %+v", err, r)
		}
	})
}
