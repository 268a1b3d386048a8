package peer

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/dtfc/dtfc"
)

// Roles a node can have (dtfc.Role).
const (
	RoleReplica = dtfc.RoleReplica
	RoleCache   = dtfc.RoleCache
)

// Peer is another node, as this node reaches it.
type Peer struct {
	// URL is how this node reaches the peer; it need not equal the peer's
	// own --me (a proxy, NAT or load balancer may sit between).
	URL string `toml:"url" json:"url"`
	// Role is "replica" (holds every file) or "cache" (gets deletes, never
	// pushed uploads). If empty in the file, it defaults to "replica".
	Role dtfc.Role `toml:"role" json:"role"`
}

// IsCache reports whether the peer is a cache.
func (p Peer) IsCache() bool { return p.Role == RoleCache }

type listFile struct {
	Peers []Peer `toml:"peers"`
}

// ParseList parses a peer list (TOML, see peerlist.toml.example). Entries
// equal to me are dropped, so one file can serve every node. Unknown keys,
// bad URLs, unknown roles and duplicates are errors naming the entry.
func ParseList(data []byte, me string) ([]Peer, error) {
	var f listFile
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
		}
		return nil, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		var names []string
		for _, k := range und {
			names = append(names, k.String())
		}
		return nil, fmt.Errorf("unknown keys: %s (an entry has url and role)", strings.Join(names, ", "))
	}
	self := normalizeURL(me)
	seen := map[string]bool{}
	out := []Peer{}
	for i, p := range f.Peers {
		n := normalizeURL(p.URL)
		u, err := url.Parse(n)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("peer %d: url %q: want http(s)://host:port", i+1, p.URL)
		}
		switch p.Role {
		case "":
			p.Role = RoleReplica
		case RoleReplica, RoleCache:
		default:
			return nil, fmt.Errorf("peer %d (%s): role %q: want \"replica\" or \"cache\"", i+1, p.URL, p.Role)
		}
		if n == self {
			continue
		}
		if seen[n] {
			return nil, fmt.Errorf("peer %d: %s is listed twice", i+1, p.URL)
		}
		seen[n] = true
		p.URL = n
		out = append(out, p)
	}
	return out, nil
}

// LoadList reads and parses the peer list file at path.
func LoadList(path, me string) ([]Peer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("peer list: %w", err)
	}
	peers, err := ParseList(data, me)
	if err != nil {
		return nil, fmt.Errorf("peer list %s: %w", path, err)
	}
	return peers, nil
}

// normalizeURL makes equal URLs compare equal: lower-case scheme and host,
// no trailing slash.
func normalizeURL(s string) string {
	s = strings.TrimSpace(s)
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	u.Scheme = strings.ToLower(u.Scheme)
	u.Host = strings.ToLower(u.Host)
	u.Path = strings.TrimRight(u.Path, "/")
	return u.String()
}
