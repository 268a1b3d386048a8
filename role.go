package dtfc

import "fmt"

// Role is what a node is to the cluster (API.md, "Peer list"): a replica
// holds every file; a cache holds what it served lately and gets deletes,
// never pushed uploads.
type Role string

// The roles.
const (
	RoleReplica Role = "replica"
	RoleCache   Role = "cache"
)

// ParseRole reads a role as written in the config or the peer list; an
// empty string is RoleReplica.
func ParseRole(s string) (Role, error) {
	switch Role(s) {
	case "", RoleReplica:
		return RoleReplica, nil
	case RoleCache:
		return RoleCache, nil
	}
	return "", fmt.Errorf("role %q: want %q or %q", s, RoleReplica, RoleCache)
}

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
