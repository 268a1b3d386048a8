package dtfc

import "fmt"

// Role is what a node is to the cluster (API.md, "Peer list"): a replica
// holds every file; a cache holds what it served lately and gets deletes,
// never pushed uploads; an archive is a bucket of an S3-compatible store
// (a peer list entry only, never a node's own role).
type Role string

// The roles.
const (
	RoleReplica Role = "replica"
	RoleCache   Role = "cache"
	RoleArchive Role = "archive"
)

// ParseRole reads a role as written in the config or the peer list; an
// empty string is RoleReplica.
func ParseRole(s string) (Role, error) {
	switch Role(s) {
	case "", RoleReplica:
		return RoleReplica, nil
	case RoleCache:
		return RoleCache, nil
	case RoleArchive:
		return RoleArchive, nil
	}
	return "", fmt.Errorf("role %q: want %q, %q or %q", s, RoleReplica, RoleCache, RoleArchive)
}

// IsNode reports whether r is the role of a node (replica or cache), not
// of an archive.
func (r Role) IsNode() bool { return r == RoleReplica || r == RoleCache }

// IsCache reports whether r is RoleCache.
func (r Role) IsCache() bool { return r == RoleCache }

// MarshalText implements encoding.TextMarshaler.
func (r Role) MarshalText() ([]byte, error) { return []byte(r), nil }

// UnmarshalText implements encoding.TextUnmarshaler (TOML, JSON) with
// ParseRole.
func (r *Role) UnmarshalText(b []byte) error {
	v, err := ParseRole(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}
