// Package defaults holds every default of a node's configuration, decided
// once: the config file's and flags' defaults (cmd/dtfc) and what
// peer.New and server.New take for a zero option are these values.
// API.md's Configuration section documents them; README's too.
package defaults

import "time"

const (
	// Port is the HTTP port (port).
	Port = 8080
	// IdleTimeout cuts off an upload body that sends nothing for this long
	// (idle_timeout).
	IdleTimeout = 60 * time.Second
	// ReplicasTimeout bounds the wait of ?replicas=N (replicas_timeout).
	ReplicasTimeout = 30 * time.Second
	// ScrubInterval is how often a scrub pass starts (scrub_interval; 0
	// means never).
	ScrubInterval = 24 * time.Hour
	// ScrubRate bounds the scrubber's reads, in bytes per second
	// (scrub_rate).
	ScrubRate = 64 << 20
	// AntiEntropyInterval is how often each peer's digests are compared
	// (anti_entropy_interval).
	AntiEntropyInterval = time.Minute
	// ArchiveInterval is how often a node reads what other nodes wrote
	// to an archive (archive_interval).
	ArchiveInterval = 10 * time.Second
	// TombstoneRetention: an acknowledged delete is remembered at least
	// this long (tombstone_retention).
	TombstoneRetention = 720 * time.Hour
	// TombstoneExpiry: a peer that has not acknowledged a delete for this
	// long is marked expired (tombstone_expiry).
	TombstoneExpiry = 2160 * time.Hour
	// MaxClockOffset bounds how far ahead of this node's clock a remote
	// state may be (max_clock_offset).
	MaxClockOffset = time.Minute
	// ShutdownGrace is how long a stopping node lets requests finish
	// (shutdown_grace).
	ShutdownGrace = 30 * time.Second
	// MaxUploadsPerClient bounds one client address's uploads at once
	// (max_uploads_per_client).
	MaxUploadsPerClient = 64
	// MaxHeaderBytes bounds a request's head (max_header_bytes).
	MaxHeaderBytes = 8 << 10
	// ReadHeaderTimeout bounds the reading of a request's head
	// (read_header_timeout).
	ReadHeaderTimeout = 10 * time.Second
	// MaxPeerFetches bounds the transfers from peers at once
	// (max_peer_fetches).
	MaxPeerFetches = 64
	// PeerFetchSources is how many holders a transfer of a large blob
	// takes pieces from at once (peer_fetch_sources).
	PeerFetchSources = 4
)
