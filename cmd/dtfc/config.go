package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/internal/defaults"
	"github.com/dtfc/dtfc/internal/listflag"
)

// Config is everything `dtfc serve` can be told, from flags or a TOML file
// (flags win). TOML keys are the flags' long names with '-' written '_'.
type Config struct {
	Host     string     `toml:"host"`
	Port     int        `toml:"port"`
	Basedir  string     `toml:"basedir"`
	Me       string     `toml:"me"`
	Peerlist string     `toml:"peerlist"`
	Join     StringList `toml:"join"`
	Role     dtfc.Role  `toml:"role"`
	MaxBytes ByteSize   `toml:"max_bytes"`
	Verbose  bool       `toml:"verbose"`

	MaxUploadBytes  ByteSize   `toml:"max_upload_bytes"`
	IdleTimeout     Duration   `toml:"idle_timeout"`
	ReplicasTimeout Duration   `toml:"replicas_timeout"`
	AuthToken       StringList `toml:"auth_token"`
	ReadToken       StringList `toml:"read_token"`
	PrivateStatus   bool       `toml:"private_status"`
	ClusterSecret   StringList `toml:"cluster_secret"`

	TLSCert            string `toml:"tls_cert"`
	TLSKey             string `toml:"tls_key"`
	TLSCA              string `toml:"tls_ca"`
	TLSClientCert      string `toml:"tls_client_cert"`
	TLSClientKey       string `toml:"tls_client_key"`
	TLSRequirePeerCert bool   `toml:"tls_require_peer_cert"`

	MaxUploadsPerClient int        `toml:"max_uploads_per_client"`
	TrustedProxies      StringList `toml:"trusted_proxies"`
	MaxHeaderBytes      ByteSize   `toml:"max_header_bytes"`
	ReadHeaderTimeout   Duration   `toml:"read_header_timeout"`
	MaxPeerFetches      int        `toml:"max_peer_fetches"`
	PeerFetchSources    int        `toml:"peer_fetch_sources"`
	ScrubInterval       Duration   `toml:"scrub_interval"`
	ScrubRate           ByteSize   `toml:"scrub_rate"`
	AntiEntropyInterval Duration   `toml:"anti_entropy_interval"`
	ArchiveInterval     Duration   `toml:"archive_interval"`
	TombstoneRetention  Duration   `toml:"tombstone_retention"`
	TombstoneExpiry     Duration   `toml:"tombstone_expiry"`
	MaxClockOffset      Duration   `toml:"max_clock_offset"`
	ShutdownGrace       Duration   `toml:"shutdown_grace"`
	FastHits            bool       `toml:"fast_hits"`

	CORSOrigins  StringList `toml:"cors_origins"`
	CouchDBAuth  string     `toml:"couchdb_auth"`
	CouchDBRoles StringList `toml:"couchdb_roles"`
}

func defaultConfig() Config {
	return Config{
		Host:                "0.0.0.0",
		Port:                defaults.Port,
		Basedir:             "./dtfc-data",
		Role:                dtfc.RoleReplica,
		IdleTimeout:         Duration(defaults.IdleTimeout),
		ReplicasTimeout:     Duration(defaults.ReplicasTimeout),
		ScrubInterval:       Duration(defaults.ScrubInterval),
		ScrubRate:           defaults.ScrubRate,
		AntiEntropyInterval: Duration(defaults.AntiEntropyInterval),
		ArchiveInterval:     Duration(defaults.ArchiveInterval),
		TombstoneRetention:  Duration(defaults.TombstoneRetention),
		TombstoneExpiry:     Duration(defaults.TombstoneExpiry),
		MaxClockOffset:      Duration(defaults.MaxClockOffset),
		ShutdownGrace:       Duration(defaults.ShutdownGrace),
		MaxUploadsPerClient: defaults.MaxUploadsPerClient,
		MaxHeaderBytes:      defaults.MaxHeaderBytes,
		ReadHeaderTimeout:   Duration(defaults.ReadHeaderTimeout),
		MaxPeerFetches:      defaults.MaxPeerFetches,
		PeerFetchSources:    defaults.PeerFetchSources,
		FastHits:            true,
	}
}

// StringList is a list of strings: in TOML a string or an array of
// strings; as a flag, repeatable (or comma-separated).
type StringList []string

// UnmarshalTOML accepts a string or an array of strings.
func (l *StringList) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case string:
		*l = StringList{x}
		return nil
	case []any:
		out := StringList{}
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("want strings, got %v", e)
			}
			out = append(out, s)
		}
		*l = out
		return nil
	}
	return fmt.Errorf("want a string or an array of strings, got %v", v)
}

// asFlag returns l as a repeatable flag (or comma-separated): its first
// use on the command line replaces what the config file said, later uses
// add.
func (l *StringList) asFlag() flag.Value {
	return &listflag.List{Into: (*[]string)(l), Commas: true, Replace: true}
}

// Duration is a time.Duration written as a Go duration string ("1.5s").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (write it like \"1.5s\", \"10m\" or \"24h\")", b)
	}
	*d = Duration(v)
	return nil
}

// String implements flag.Value.
func (d *Duration) String() string { return time.Duration(*d).String() }

// Set implements flag.Value.
func (d *Duration) Set(s string) error { return d.UnmarshalText([]byte(s)) }

// ByteSize is a size in bytes: an integer, or a string with a unit
// ("512MiB", "10GB", "1.5TiB").
type ByteSize int64

var sizeRe = regexp.MustCompile(`^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?)(I?)B?\s*$`)

// ParseByteSize parses "1048576", "1MiB", "1MB", "1.5G".
func ParseByteSize(s string) (ByteSize, error) {
	m := sizeRe.FindStringSubmatch(strings.ToUpper(s))
	if m == nil {
		return 0, fmt.Errorf("%q is not a size (write it like 1048576, \"512MiB\" or \"10GB\")", s)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, err
	}
	base := 1000.0
	if m[3] == "I" {
		base = 1024
	}
	for i := 0; i < strings.Index("KMGTP", m[2])+1 && m[2] != ""; i++ {
		v *= base
	}
	return ByteSize(v), nil
}

// UnmarshalTOML accepts an integer or a string with a unit.
func (b *ByteSize) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		*b = ByteSize(x)
		return nil
	case string:
		s, err := ParseByteSize(x)
		*b = s
		return err
	}
	return fmt.Errorf("want a size, got %v", v)
}

// String implements flag.Value.
func (b *ByteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

// Set implements flag.Value.
func (b *ByteSize) Set(s string) error {
	v, err := ParseByteSize(s)
	*b = v
	return err
}

// serveFlags registers every serve flag on fs, bound to c.
func serveFlags(fs *flag.FlagSet, c *Config, configPath *string) {
	fs.StringVar(configPath, "config", "", "TOML file with any of the settings below (flags win)")
	fs.StringVar(&c.Host, "host", c.Host, "interface to listen on")
	fs.IntVar(&c.Port, "port", c.Port, "port to listen on")
	fs.IntVar(&c.Port, "p", c.Port, "port to listen on (shorthand)")
	fs.StringVar(&c.Basedir, "basedir", c.Basedir, "directory holding all state of the node (created if missing)")
	fs.StringVar(&c.Me, "me", c.Me, "URL under which other nodes and clients reach this node (default http://<host>:<port>)")
	fs.StringVar(&c.Peerlist, "peerlist", c.Peerlist, "peer list TOML file; none = a single node")
	fs.Var(c.Join.asFlag(), "join", "URL of a member to join the cluster through (it and every member learn of this node); repeatable")
	fs.TextVar(&c.Role, "role", c.Role, "replica (holds every file) or cache (holds what was read through it)")
	fs.Var(&c.MaxBytes, "max-bytes", "size of the local store to stay under (0 = no limit): a cache evicts; a replica with an archive in its peer list keeps only recently read blobs' bytes")
	fs.BoolVar(&c.Verbose, "verbose", c.Verbose, "debug logging")
	fs.BoolVar(&c.Verbose, "v", c.Verbose, "debug logging (shorthand)")
	fs.Var(&c.MaxUploadBytes, "max-upload-bytes", "larger uploads get 413 (0 = no limit)")
	fs.Var(&c.IdleTimeout, "idle-timeout", "an upload body that sends nothing this long gets 408")
	fs.Var(&c.ReplicasTimeout, "replicas-timeout", "how long ?replicas=N waits before 504")
	fs.Var(c.AuthToken.asFlag(), "auth-token", "when set, writes need Authorization: Bearer <token>; repeat for several (rotation). Prefer the config file: flags show in ps")
	fs.Var(c.ReadToken.asFlag(), "read-token", "when set, reads need Authorization: Bearer <token> (a write token reads too); repeatable")
	fs.BoolVar(&c.PrivateStatus, "private-status", c.PrivateStatus, "require a read or write token for /, /_status and /metrics")
	fs.Var(c.ClusterSecret.asFlag(), "cluster-secret", "when set, node-to-node requests must carry it; with several, the first is sent and all are accepted (rotation). Prefer the config file")
	fs.Var(&c.ScrubInterval, "scrub-interval", "how often a full re-hash pass over the store starts (0 = never)")
	fs.Var(&c.ScrubRate, "scrub-rate", "bytes per second the scrubber reads at most (0 = no limit)")
	fs.Var(&c.AntiEntropyInterval, "anti-entropy-interval", "how often each peer's digests are compared")
	fs.Var(&c.ArchiveInterval, "archive-interval", "how often this node reads what other nodes wrote to an archive")
	fs.Var(&c.TombstoneRetention, "tombstone-retention", "how long a delete (or lifted block) every peer acknowledged is remembered")
	fs.Var(&c.TombstoneExpiry, "tombstone-expiry", "after this, a peer that never acknowledged a delete stops holding it back and must resync when it returns (must exceed tombstone-retention)")
	fs.Var(&c.MaxClockOffset, "max-clock-offset", "remote states whose clock is further ahead of this node's are refused")
	fs.Var(&c.ShutdownGrace, "shutdown-grace", "how long a shutdown waits for requests in flight")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM certificate: serve HTTPS (re-read when it changes)")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM key of tls-cert")
	fs.StringVar(&c.TLSCA, "tls-ca", c.TLSCA, "PEM CA bundle that verifies peers (and their client certificates)")
	fs.StringVar(&c.TLSClientCert, "tls-client-cert", c.TLSClientCert, "PEM client certificate presented to peers (mutual TLS)")
	fs.StringVar(&c.TLSClientKey, "tls-client-key", c.TLSClientKey, "PEM key of tls-client-cert")
	fs.BoolVar(&c.TLSRequirePeerCert, "tls-require-peer-cert", c.TLSRequirePeerCert, "node-to-node routes require a client certificate verified by tls-ca")
	fs.IntVar(&c.MaxUploadsPerClient, "max-uploads-per-client", c.MaxUploadsPerClient, "uploads in flight per client address before 429 (negative = no limit)")
	fs.Var(c.TrustedProxies.asFlag(), "trusted-proxies", "addresses or CIDRs of reverse proxies whose X-Forwarded-For names the client; repeatable")
	fs.Var(&c.MaxHeaderBytes, "max-header-bytes", "largest request head (request line and header fields, as HTTP/1.1 sends them) accepted; larger ones get 431")
	fs.Var(&c.ReadHeaderTimeout, "read-header-timeout", "time a client has to send its request headers")
	fs.BoolVar(&c.FastHits, "fast-hits", c.FastHits, "answer plain keep-alive GETs of local blobs outside net/http (plain HTTP only); --fast-hits=false sends every request through net/http")
	fs.IntVar(&c.MaxPeerFetches, "max-peer-fetches", c.MaxPeerFetches, "transfers from peers at once; a miss beyond waits, then gets 503")
	fs.IntVar(&c.PeerFetchSources, "peer-fetch-sources", c.PeerFetchSources, "holders a transfer of a large blob (16 MiB or more) takes pieces from at once; 1: one holder at a time")
	fs.Var(c.CORSOrigins.asFlag(), "cors-origins", "origins whose browser pages may read and upload (CORS); \"*\" for any; repeatable")
	fs.StringVar(&c.CouchDBAuth, "couchdb-auth", c.CouchDBAuth, "CouchDB URL whose sessions (AuthSession cookie or Basic credentials) authorize writers")
	fs.Var(c.CouchDBRoles.asFlag(), "couchdb-roles", "with couchdb-auth: a writer needs one of these CouchDB roles; repeatable")
}

// loadConfig builds the configuration: defaults, then the TOML file named
// by --config, then the flags given explicitly.
func loadConfig(args []string) (Config, error) {
	c := defaultConfig()
	var path string
	fs := flag.NewFlagSet("dtfc serve", flag.ContinueOnError)
	serveFlags(fs, &c, &path)
	// Errors are returned, not printed with the whole usage: the caller
	// prints one line. -h prints the usage to stdout.
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fmt.Fprintf(os.Stdout, "Usage: dtfc [serve] [flags]\n\nFlags (each also a key of the --config TOML file, '-' written '_'):\n")
			fs.PrintDefaults()
			return c, err
		}
		return c, usagef("%w (dtfc serve -h lists the flags)", err)
	}
	if fs.NArg() > 0 {
		return c, usagef("unexpected argument %q (see dtfc help)", fs.Arg(0))
	}
	if path != "" {
		c = defaultConfig()
		if err := decodeConfigFile(path, &c); err != nil {
			return c, err
		}
		// Parse the flags again over the file's values: flags win, and
		// only those given on the command line are set.
		again := flag.NewFlagSet("dtfc serve", flag.ContinueOnError)
		again.SetOutput(io.Discard)
		serveFlags(again, &c, &path)
		if err := again.Parse(args); err != nil {
			return c, err
		}
	}
	return c, c.validate()
}

// decodeConfigFile decodes a TOML file, refusing unknown keys and naming
// the line where each appears.
func decodeConfigFile(path string, c *Config) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	md, err := toml.Decode(string(data), c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("config %s: line %d: %s", path, pe.Position.Line, pe.Message)
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		var msgs []string
		for _, k := range und {
			msgs = append(msgs, fmt.Sprintf("line %d: unknown key %q", keyLine(data, k), k.String()))
		}
		return fmt.Errorf("config %s: %s (known keys are the flags' long names with '-' written '_': see dtfc serve -h)", path, strings.Join(msgs, "; "))
	}
	return nil
}

// keyLine finds the line that defines the last part of key k (0 if not
// found). BurntSushi/toml keeps key positions private, so this scans.
func keyLine(data []byte, k toml.Key) int {
	last := k[len(k)-1]
	re := regexp.MustCompile(`^\s*["']?` + regexp.QuoteMeta(last) + `["']?\s*=`)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		if re.MatchString(sc.Text()) {
			return n
		}
	}
	return 0
}

func (c *Config) validate() error {
	var errs []error
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d: want 0 to 65535", c.Port))
	}
	if r, err := dtfc.ParseRole(string(c.Role)); err != nil || c.Role == "" || !r.IsNode() {
		errs = append(errs, fmt.Errorf("role %q: want \"replica\" or \"cache\"", c.Role))
	}
	if c.MaxBytes < 0 || c.MaxUploadBytes < 0 || c.ScrubRate < 0 {
		errs = append(errs, errors.New("sizes cannot be negative"))
	}
	if c.MaxBytes > 0 && !c.Role.IsCache() && c.Peerlist == "" {
		errs = append(errs, errors.New("max_bytes on a replica needs an archive (an s3:// entry with role = \"archive\") in its peerlist: a replica evicts only what an archive holds; or set role = \"cache\""))
	}
	if c.Basedir == "" {
		errs = append(errs, errors.New("basedir is empty"))
	}
	for name, d := range map[string]Duration{
		"idle_timeout": c.IdleTimeout, "replicas_timeout": c.ReplicasTimeout,
		"anti_entropy_interval": c.AntiEntropyInterval, "tombstone_retention": c.TombstoneRetention,
		"archive_interval": c.ArchiveInterval,
		"tombstone_expiry": c.TombstoneExpiry, "max_clock_offset": c.MaxClockOffset,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	if c.TombstoneExpiry > 0 && c.TombstoneExpiry <= c.TombstoneRetention {
		errs = append(errs, fmt.Errorf("tombstone_expiry (%v) must exceed tombstone_retention (%v)", time.Duration(c.TombstoneExpiry), time.Duration(c.TombstoneRetention)))
	}
	if c.ScrubInterval < 0 || c.ShutdownGrace < 0 {
		errs = append(errs, errors.New("scrub_interval and shutdown_grace cannot be negative"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("tls_cert and tls_key go together"))
	}
	if (c.TLSClientCert == "") != (c.TLSClientKey == "") {
		errs = append(errs, errors.New("tls_client_cert and tls_client_key go together"))
	}
	if c.TLSRequirePeerCert && (c.TLSCA == "" || c.TLSCert == "") {
		errs = append(errs, errors.New("tls_require_peer_cert needs tls_ca (to verify peers' certificates) and tls_cert (HTTPS)"))
	}
	if key := c.tokenKey(); key != "" && !anySet(c.ClusterSecret) && (c.Peerlist != "" || len(c.Join) > 0) {
		// The node-to-node routes take uploads and deletes and serve
		// every blob; without a secret they would do so for anyone,
		// token or not.
		errs = append(errs, fmt.Errorf("%s is set but cluster_secret is not: with a peerlist, the node-to-node routes (/_internal) would accept writes and serve blobs without any token; set cluster_secret (the same on every node)", key))
	}
	if _, err := c.proxies(); err != nil {
		errs = append(errs, err)
	}
	if c.PeerFetchSources < 1 || c.PeerFetchSources > 16 {
		errs = append(errs, fmt.Errorf("peer_fetch_sources must be from 1 to 16, not %d", c.PeerFetchSources))
	}
	if c.MaxHeaderBytes < 1024 || c.ReadHeaderTimeout <= 0 || c.MaxPeerFetches < 1 {
		errs = append(errs, errors.New("max_header_bytes must be at least 1024, read_header_timeout positive, max_peer_fetches at least 1"))
	}
	errs = append(errs, c.validateApps()...)
	if c.Me == "" {
		scheme := "http://"
		if c.TLSCert != "" {
			scheme = "https://"
		}
		host := c.Host
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			// Listening on every interface: the wildcard address is no URL
			// anyone can reach, the machine's name is the best guess.
			if h, err := os.Hostname(); err == nil && h != "" {
				host = h
			} else {
				host = "localhost"
			}
		}
		c.Me = scheme + net.JoinHostPort(host, strconv.Itoa(c.Port))
	}
	if u, err := url.Parse(c.Me); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("me %q: want a URL like http://host:port", c.Me))
	}
	c.Me = strings.TrimRight(c.Me, "/")
	return errors.Join(errs...)
}

// validateApps checks the keys for applications: CORS origins and CouchDB
// sessions.
func (c *Config) validateApps() []error {
	var errs []error
	for _, o := range c.CORSOrigins {
		if o == "*" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			errs = append(errs, fmt.Errorf("cors_origins %q: want \"*\" or an origin like https://app.example.com (scheme, host, optional port; no path)", o))
		}
	}
	if c.CouchDBAuth != "" {
		if u, err := url.Parse(c.CouchDBAuth); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			errs = append(errs, errors.New("couchdb_auth: want CouchDB's URL, like http://127.0.0.1:5984, without credentials in it (dtfc forwards each writer's own)"))
		}
	}
	for _, j := range c.Join {
		if u, err := url.Parse(j); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("join %q: want a member's URL, like http://host:port", j))
		}
	}
	if anySet(c.CouchDBRoles) && c.CouchDBAuth == "" {
		errs = append(errs, errors.New("couchdb_roles needs couchdb_auth (the CouchDB whose sessions name the roles)"))
	}
	return errs
}

// anySet reports whether l holds a non-empty string: an empty token or
// secret is ignored, as if unset.
func anySet(l StringList) bool {
	for _, s := range l {
		if s != "" {
			return true
		}
	}
	return false
}

// tokenKey names the first client token set (auth_token, then
// read_token), or "" if none is.
func (c *Config) tokenKey() string {
	switch {
	case anySet(c.AuthToken):
		return "auth_token"
	case anySet(c.ReadToken):
		return "read_token"
	case c.CouchDBAuth != "":
		return "couchdb_auth"
	}
	return ""
}

// internalHidden reports whether the node-to-node routes are not served:
// writes or reads need a token, no cluster secret protects those routes,
// and there is no peer list (validate refuses the same with one).
func (c *Config) internalHidden() bool {
	return c.tokenKey() != "" && !anySet(c.ClusterSecret) && c.Peerlist == "" && len(c.Join) == 0
}

// proxies parses trusted_proxies: addresses or CIDR prefixes.
func (c *Config) proxies() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, p := range c.TrustedProxies {
		if pf, err := netip.ParsePrefix(p); err == nil {
			out = append(out, pf.Masked())
			continue
		}
		a, err := netip.ParseAddr(p)
		if err != nil {
			return nil, fmt.Errorf("trusted_proxies: %q is neither an address nor a CIDR prefix", p)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}
