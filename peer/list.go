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
	RoleArchive = dtfc.RoleArchive
)

// Peer is another node, as this node reaches it.
type Peer struct {
	// URL is how this node reaches the peer; it need not equal the peer's
	// own --me (a proxy, NAT or load balancer may sit between).
	URL string `toml:"url" json:"url"`
	// Role is "replica" (holds every file) or "cache" (gets deletes, never
	// pushed uploads), or "archive" for an s3://bucket/prefix entry. If
	// empty in the file, it defaults to "replica".
	Role dtfc.Role `toml:"role" json:"role"`

	// An archive's bucket is reached at Endpoint (empty: AWS itself) in
	// Region (empty: us-east-1), with the bucket in the path if
	// PathStyle, with static credentials if AccessKeyID is set (the
	// secret read from SecretAccessKeyFile), else the AWS standard chain.
	// Never shown (json "-" for the credentials).
	Endpoint            string `toml:"endpoint" json:"endpoint,omitempty"`
	Region              string `toml:"region" json:"region,omitempty"`
	PathStyle           bool   `toml:"path_style" json:"path_style,omitempty"`
	AccessKeyID         string `toml:"access_key_id" json:"-"`
	SecretAccessKeyFile string `toml:"secret_access_key_file" json:"-"`
}

// IsCache reports whether the peer is a cache.
func (p Peer) IsCache() bool { return p.Role == RoleCache }

// IsArchive reports whether the peer is an archive (a bucket).
func (p Peer) IsArchive() bool { return p.Role == RoleArchive }

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
		return nil, fmt.Errorf("unknown keys: %s (an entry has url and role; an archive also endpoint, region, path_style, access_key_id, secret_access_key_file)", strings.Join(names, ", "))
	}
	self := normalizeURL(me)
	seen := map[string]bool{}
	out := []Peer{}
	for i, p := range f.Peers {
		n := normalizeURL(p.URL)
		u, err := url.Parse(n)
		if err == nil && u.Scheme == "s3" {
			if err := checkArchive(p, u); err != nil {
				// Named without any user information: the URL might
				// carry a key.
				named := *u
				named.User = nil
				return nil, fmt.Errorf("peer %d (%s): %w", i+1, named.String(), err)
			}
		} else {
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
				return nil, fmt.Errorf("peer %d: url %q: want http(s)://host:port, or s3://bucket/prefix with role = \"archive\"", i+1, p.URL)
			}
			switch p.Role {
			case "":
				p.Role = RoleReplica
			case RoleReplica, RoleCache:
			case RoleArchive:
				return nil, fmt.Errorf("peer %d (%s): role \"archive\" is for an s3://bucket/prefix entry, not a node's URL", i+1, p.URL)
			default:
				return nil, fmt.Errorf("peer %d (%s): role %q: want \"replica\" or \"cache\"", i+1, p.URL, p.Role)
			}
			if p.Endpoint != "" || p.Region != "" || p.PathStyle || p.AccessKeyID != "" || p.SecretAccessKeyFile != "" {
				return nil, fmt.Errorf("peer %d (%s): endpoint, region, path_style and credentials apply only to an s3:// archive entry", i+1, p.URL)
			}
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

// checkArchive checks an s3:// entry: a bucket, role "archive", and an
// endpoint that is a URL.
func checkArchive(p Peer, u *url.URL) error {
	if p.Role != RoleArchive {
		role := p.Role
		if role == "" {
			role = RoleReplica + " (the default)"
		}
		return fmt.Errorf("an s3:// entry must have role = \"archive\", not %s", role)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return errors.New("want s3://bucket/prefix (credentials go in access_key_id and secret_access_key_file)")
	}
	if p.Endpoint != "" {
		e, err := url.Parse(p.Endpoint)
		if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" || e.User != nil {
			return fmt.Errorf("endpoint %q: want http(s)://host[:port]", p.Endpoint)
		}
	}
	if (p.AccessKeyID == "") != (p.SecretAccessKeyFile == "") {
		return errors.New("access_key_id and secret_access_key_file go together (or neither, for the AWS standard chain)")
	}
	return nil
}
