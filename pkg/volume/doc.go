// Package volume is the domain layer of csi-ploop: it owns volumes and snapshots
// stored under one storage root, their metadata and the garbage collection of the
// delta files they share. It never talks CSI; pkg/driver translates.
//
// # Storage root layout
//
//	<root>/volumes/<volID>/DiskDescriptor.xml   ploop image dir; its chain references pool deltas by absolute path
//	<root>/deltas/<hex32>.hds                   pool of delta files shared by volumes and snapshots
//	<root>/meta/volumes/<volID>.json            committed volume record (name, capacity, parameters, source)
//	<root>/meta/snapshots/<snapID>.json         committed snapshot record (name, source volume, frozen chain)
//	<root>/meta/staged/<volID>.json             node-side record: volume is staged (path, block, device)
//
// Volume IDs are "vol-" + 32 hex digits, snapshot IDs "snap-" + 32 hex digits, delta
// files 32 hex digits + ".hds". Every ID arriving from a request is checked against
// these patterns before it is turned into a path, so no request can escape the root.
//
// # Crash consistency
//
// The metadata JSON file is the commit point of every operation. Files are created
// before their metadata is committed and deleted after their metadata is removed, so a
// crash at any point leaves at worst unreferenced files: volume dirs without metadata and
// deltas referenced neither by a committed volume's descriptor nor by a snapshot record.
// Sweep (run by Open) removes exactly those. Metadata writes are atomic: temp file,
// fsync, rename, fsync of the directory.
//
// Creators hold the GC lock shared for the whole operation and Sweep holds it
// exclusively, so a sweep never sees the not-yet-committed files of an in-flight create.
// Everything else is serialized per volume/snapshot ID or per name with keyed locks.
package volume
