package api

import (
	"time"

	"github.com/dtfc/dtfc"
)

// Status is the body of GET /_status.
type Status struct {
	// Node is the node's own URL (--me).
	Node string `json:"node"`
	// Role is the node's role: "replica" or "cache".
	Role    dtfc.Role              `json:"role"`
	Blobs   int64                  `json:"blobs"`
	Bytes   int64                  `json:"bytes"`
	Queues  map[string]QueueStatus `json:"queues"`
	Uptime  string                 `json:"uptime"`
	Started time.Time              `json:"started"`
	// Cluster is present when the node has a peer list.
	Cluster *Cluster `json:"cluster,omitempty"`
	// Disk is the filesystem holding the store, absent where it cannot be
	// measured.
	Disk *Disk `json:"disk,omitempty"`
	// RecentErrors are the node's latest warnings and errors, newest
	// first; empty if there were none or nobody keeps them.
	RecentErrors []LogEntry `json:"recent_errors"`
	// Unconfirmed counts the blob files the node holds aside because it
	// does not know their state (after its metadata was rebuilt, or an
	// upload cut by a crash): never served, never replicated. See README,
	// "When the metadata is damaged".
	Unconfirmed int64 `json:"unconfirmed"`
}

// QueueStatus describes replication towards one peer.
type QueueStatus struct {
	// Length counts operations not yet accepted by the peer.
	Length int64 `json:"length"`
}

// Disk is the filesystem holding the store.
type Disk struct {
	// Dir is the directory measured: the store's base directory.
	Dir string `json:"dir"`
	// FreeBytes is what an unprivileged writer can still use.
	FreeBytes uint64 `json:"free_bytes"`
	// TotalBytes is the filesystem's size.
	TotalBytes uint64 `json:"total_bytes"`
}

// LogEntry is one of a node's recent warnings or errors.
type LogEntry struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Message string    `json:"message"`
	// Attrs are the record's attributes, those added with Logger.With
	// included, as "key=value" pairs separated by spaces.
	Attrs string `json:"attrs,omitempty"`
}

// Cluster describes the cluster as a node sees it.
type Cluster struct {
	Peers  []PeerStatus `json:"peers"`
	Synced bool         `json:"synced"`
	// Resyncing is Resync.State != ResyncInSync: the node holds its
	// states back until it has compared them with the peers that expired
	// it.
	Resyncing bool          `json:"resyncing"`
	Resync    ResyncStatus  `json:"resync"`
	Scrub     ScrubProgress `json:"scrub"`
	// Eviction is present on a node given max_bytes (a cache or a tier).
	Eviction *Eviction `json:"eviction,omitempty"`
	// UnconfirmedPending counts the unconfirmed blobs this node will ask
	// its peers about again soon: some peer could not be asked yet (it
	// is down, cut off, or the first pass at start-up did not reach
	// them). Those whose state nobody can tell stay in "unconfirmed"
	// only.
	UnconfirmedPending int64 `json:"unconfirmed_pending"`
	// IdentityConflict, if set, says why this node takes no uploads or
	// deletes: another running node has its identity (a copy of its
	// basedir). See README, "Adding and removing nodes".
	IdentityConflict string `json:"identity_conflict,omitempty"`
	// Members are the membership records (GET /_members), removals
	// included: every node records itself, and learns the others' records
	// from its peers.
	Members []Member `json:"members,omitempty"`
}

// Eviction describes how a cache or a tier stays under max_bytes.
type Eviction struct {
	// MaxBytes is the size the node's store stays under (max_bytes).
	MaxBytes int64 `json:"max_bytes"`
	// Over reports that the store holds more than MaxBytes now: what is
	// left is not evictable yet (a cache's uploads no replica accepted, a
	// tier's that an archive has not), or an eviction is due.
	Over bool `json:"over"`
	// Evicted and EvictedBytes count the blobs evicted, and their bytes,
	// since the node started (dtfc_cache_evictions_total counts the same
	// blobs).
	Evicted      int64 `json:"evicted"`
	EvictedBytes int64 `json:"evicted_bytes"`
}

// Member is a node of the cluster as membership records it (GET
// /_members): one per node identity, last writer wins by Clock.
type Member struct {
	// Node is the node's identity (its store's node ID).
	Node string `json:"node"`
	// URL is where the members reach it; a node that joins again under
	// a new URL replaces its old one.
	URL  string    `json:"url"`
	Role dtfc.Role `json:"role"`
	// Since is when it joined (or was added again).
	Since time.Time `json:"since"`
	// Removed marks a node taken out of the cluster: nobody pushes to it
	// and its own requests are refused until it is added again.
	Removed bool `json:"removed,omitempty"`
	// Clock is the record's hybrid logical clock (last writer wins).
	Clock dtfc.Timestamp `json:"clock"`
}

// PeerStatus describes one peer as a node sees it.
type PeerStatus struct {
	URL string `json:"url"`
	// Role is the peer list's word.
	Role dtfc.Role `json:"role"`
	// ReportedRole is the role the peer says it has, once it answered;
	// it wins over Role (the peer list's).
	ReportedRole dtfc.Role `json:"reported_role,omitempty"`
	Node         string    `json:"node,omitempty"`
	// Self: the entry reaches this very node (under another URL); it is
	// ignored.
	Self bool `json:"self,omitempty"`
	// Nodes lists the identities that answered at this URL in the last
	// ten minutes, when it answered as more than one node by turns (a
	// load balancer, a name that moves between hosts): each node must be
	// listed under a URL of its own. Absent otherwise.
	Nodes []string `json:"nodes,omitempty"`
	// Expired: this node forgot deletes the peer never acknowledged (it
	// was away longer than tombstone_expiry); it must resync on return.
	// ExpiredSince is the last moment it was known to be caught up with
	// this node's changes; ExpiredHorizon the time of the latest of what
	// was forgotten without its acknowledgement.
	Expired        bool      `json:"expired"`
	ExpiredSince   time.Time `json:"expired_since,omitzero"`
	ExpiredHorizon time.Time `json:"expired_horizon,omitzero"`
	// ExpiredBy names (by node identity) another peer that says it
	// marked this one expired: nothing is taken from this one here
	// either until that mark is lifted.
	ExpiredBy string `json:"expired_by,omitempty"`
	// ClockRefused counts changes the peer refused because their clock
	// was too far ahead of its own (since this node started).
	ClockRefused int64     `json:"clock_refused"`
	Up           bool      `json:"up"`
	Contacted    bool      `json:"contacted"`
	LastContact  time.Time `json:"last_contact,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	LastErrorAt  time.Time `json:"last_error_at,omitzero"`
	Failures     int       `json:"failures"`
	// Queue counts operations not yet accepted by the peer.
	Queue int64 `json:"queue"`
	// LagSeconds is how long replication to the peer has been behind
	// (0 when its queue is empty).
	LagSeconds float64 `json:"lag_seconds"`
	// Pusher is what this node's pusher to the peer is doing: "idle"
	// (it has sent the whole feed), "pushing", "backoff" (after a
	// failure), "held" (this node resyncs: it pushes to no one until
	// that is done), "paused" (a local error), or "stopped" (none runs
	// for this entry).
	Pusher string `json:"pusher,omitempty"`
	// PushError is why the last push to the peer failed, while none has
	// succeeded since.
	PushError string `json:"push_error,omitempty"`
	// Archive is present when the peer is an archive (an s3:// entry).
	Archive *ArchiveStatus `json:"archive,omitempty"`
}

// ArchiveStatus is what is particular to an archive peer. Its queue, lag
// and last error are the peer's. Credentials are never part of it.
type ArchiveStatus struct {
	Bucket string `json:"bucket"`
	Prefix string `json:"prefix,omitempty"`
	// Endpoint is the S3 server's URL (any user information removed);
	// empty for AWS itself.
	Endpoint string `json:"endpoint,omitempty"`
	// BytesWritten counts the blob bytes the archive accepted from this
	// node (whole blobs and parts of blobs uploaded in parts), and
	// BytesRead the blob bytes this node read from it (misses and the
	// relay), since this node started.
	BytesWritten int64 `json:"bytes_written"`
	BytesRead    int64 `json:"bytes_read"`
	// Errors counts the requests to the archive that failed since this
	// node started (the peer's last_error says the latest).
	Errors int64 `json:"errors"`
}

// ResyncState is where a node's resync stands.
type ResyncState string

// The states of a resync.
const (
	// ResyncInSync: nothing to do.
	ResyncInSync ResyncState = "in_sync"
	// ResyncNeeded: a peer said this node is expired; not started yet.
	ResyncNeeded ResyncState = "needed"
	// ResyncRunning: comparing and dropping.
	ResyncRunning ResyncState = "running"
	// ResyncRetrying: the last attempt failed; another follows.
	ResyncRetrying ResyncState = "retrying"
)

// ResyncStatus describes a node's resync.
type ResyncStatus struct {
	State ResyncState `json:"state"`
	Since time.Time   `json:"since,omitzero"`
	// Against lists the peers that expired this node and their horizons.
	Against   []ExpiredAt `json:"against,omitempty"`
	LastError string      `json:"last_error,omitempty"`
}

// ExpiredAt is one peer's word that a node is expired there.
type ExpiredAt struct {
	URL string `json:"url"`
	// Horizon: what the peer forgot without the node's acknowledgement is
	// older.
	Horizon dtfc.Timestamp `json:"horizon"`
}

// ScrubProgress is the scrubber's progress.
type ScrubProgress struct {
	Running      bool      `json:"running"`
	PassStarted  time.Time `json:"pass_started,omitzero"`
	PassFinished time.Time `json:"pass_finished,omitzero"`
	Checked      int64     `json:"checked"`
	CheckedBytes int64     `json:"checked_bytes"`
	Corrupt      int64     `json:"corrupt"`
	// Unreadable counts blobs skipped because they could not be read (an
	// error that says nothing of their bytes).
	Unreadable   int64 `json:"unreadable"`
	Passes       int64 `json:"passes"`
	TotalCorrupt int64 `json:"total_corrupt"`
}
