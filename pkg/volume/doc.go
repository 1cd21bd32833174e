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
//	<root>/meta/staged/<volID>.json             node-side record: volume is staged (path, block, fs, flags)
//	<root>/meta/published/<volID>/<hash>.json   node-side record per published target (path, bind options)
//	<root>/meta/merges/<hex32>.json             intent of a merge in progress (parent, child, volume, direction once copied)
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
// fsync, rename, fsync of the directory (pkg/durable).
//
// Creators hold the GC lock shared for the whole operation and Sweep holds it
// exclusively, so a sweep never sees the not-yet-committed files of an in-flight create.
// Everything else is serialized per volume/snapshot ID or per name with keyed locks.
//
// # Merges
//
// Once no chain needs a delta as a layer of its own (no volume's top, no
// snapshot's frozen top, no branch point), it is merged with its only child
// and leaves every chain (merge.go, mergeplan.go): DeleteSnapshot,
// DeleteVolume and Open run a merge pass, the deletes wait for it while their
// context lasts. Online through the serving process when the volume is
// attached, offline through the image store otherwise; a pair two volumes'
// chains share is left until one of them is gone. An intent record makes the
// rewrite of the references (descriptor, snapshot records) resumable.
//
// # Node records
//
// Set-up records before it acts (NodeStage writes the staged record before it
// attaches, NodePublish the target's record before it binds, and removes it again
// if the bind fails); teardown only removes records (one file per published target,
// so NodeUnpublish never rewrites a list), so it works on a full disk. A retried
// NodeStage redoes every step: a staging mount counts only if it is a mount of the
// volume's current device, and the filesystem grow is checked each time.
//
// # Defence in depth
//
// A volume's descriptor may only name regular files in the pool or in the volume's
// own directory; anything else makes it ErrCorrupt before anything attaches,
// snapshots, clones or grows it.
package volume
