package peer

import (
	"net/url"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseList(t *testing.T) {
	const me = "http://10.0.0.1:8080"
	tests := []struct {
		name    string
		in      string
		want    []Peer
		wantErr string
	}{
		{name: "empty", in: "", want: []Peer{}},
		{name: "default role", in: "[[peers]]\nurl = \"http://10.0.0.2:8080\"\n",
			want: []Peer{{URL: "http://10.0.0.2:8080", Role: RoleReplica}}},
		{name: "cache", in: "[[peers]]\nurl = \"https://c.example:443/\"\nrole = \"cache\"\n",
			want: []Peer{{URL: "https://c.example:443", Role: RoleCache}}},
		{name: "me ignored, normalised", in: "[[peers]]\nurl = \"HTTP://10.0.0.1:8080/\"\n[[peers]]\nurl = \"http://10.0.0.3:8080\"\n",
			want: []Peer{{URL: "http://10.0.0.3:8080", Role: RoleReplica}}},
		{name: "unknown key", in: "[[peers]]\nurl = \"http://x:1\"\nweight = 3\n", wantErr: "unknown keys: peers.weight"},
		{name: "unknown top key", in: "peer = 1\n", wantErr: "unknown keys: peer"},
		{name: "bad scheme", in: "[[peers]]\nurl = \"ftp://x\"\n", wantErr: "want http(s)://host:port"},
		{name: "no host", in: "[[peers]]\nurl = \"http://\"\n", wantErr: "want http(s)://host:port"},
		{name: "query", in: "[[peers]]\nurl = \"http://x:1/?a=b\"\n", wantErr: "want http(s)://host:port"},
		{name: "bad role", in: "[[peers]]\nurl = \"http://x:1\"\nrole = \"master\"\n", wantErr: `role "master"`},
		{name: "duplicate", in: "[[peers]]\nurl = \"http://x:1\"\n[[peers]]\nurl = \"http://X:1/\"\n", wantErr: "listed twice"},
		{name: "syntax", in: "[[peers]\nurl = 1\n", wantErr: "line 2: expected end of table array"},
		{name: "wrong type", in: "[[peers]]\nurl = 5\n", wantErr: "url"},
		{name: "archive", in: "[[peers]]\nurl = \"s3://Bkt/prod/\"\nrole = \"archive\"\nendpoint = \"http://127.0.0.1:7070\"\npath_style = true\naccess_key_id = \"AKID\"\nsecret_access_key_file = \"/etc/dtfc/s3\"\n",
			want: []Peer{{URL: "s3://bkt/prod", Role: RoleArchive, Endpoint: "http://127.0.0.1:7070", PathStyle: true, AccessKeyID: "AKID", SecretAccessKeyFile: "/etc/dtfc/s3"}}},
		{name: "archive, standard chain, no prefix", in: "[[peers]]\nurl = \"s3://bkt\"\nrole = \"archive\"\nregion = \"eu-west-1\"\n",
			want: []Peer{{URL: "s3://bkt", Role: RoleArchive, Region: "eu-west-1"}}},
		{name: "two prefixes of one bucket", in: "[[peers]]\nurl = \"s3://b/x\"\nrole = \"archive\"\n[[peers]]\nurl = \"s3://b/y\"\nrole = \"archive\"\n",
			want: []Peer{{URL: "s3://b/x", Role: RoleArchive}, {URL: "s3://b/y", Role: RoleArchive}}},
		{name: "archive listed twice", in: "[[peers]]\nurl = \"s3://b/x\"\nrole = \"archive\"\n[[peers]]\nurl = \"s3://b/x/\"\nrole = \"archive\"\n", wantErr: "listed twice"},
		{name: "s3 as a replica", in: "[[peers]]\nurl = \"s3://b/x\"\n", wantErr: `peer 1 (s3://b/x): an s3:// entry must have role = "archive"`},
		{name: "s3 as a cache", in: "[[peers]]\nurl = \"s3://b/x\"\nrole = \"cache\"\n", wantErr: `must have role = "archive", not cache`},
		{name: "archive on http", in: "[[peers]]\nurl = \"http://x:1\"\nrole = \"archive\"\n", wantErr: `peer 1 (http://x:1): role "archive" is for an s3://bucket/prefix entry`},
		{name: "endpoint on a node", in: "[[peers]]\nurl = \"http://x:1\"\nendpoint = \"http://y\"\n", wantErr: "apply only to an s3:// archive entry"},
		{name: "key without secret", in: "[[peers]]\nurl = \"s3://b\"\nrole = \"archive\"\naccess_key_id = \"K\"\n", wantErr: "go together"},
		{name: "credentials in the URL", in: "[[peers]]\nurl = \"s3://KEYID:SECRET@b/x\"\nrole = \"archive\"\n", wantErr: "peer 1 (s3://b/x): want s3://bucket/prefix"},
		{name: "bad endpoint", in: "[[peers]]\nurl = \"s3://b\"\nrole = \"archive\"\nendpoint = \"127.0.0.1:7070\"\n", wantErr: "endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseList([]byte(tt.in), me)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// TestExamplePeerList keeps peerlist.toml.example valid.
func TestExamplePeerList(t *testing.T) {
	data, err := os.ReadFile("../peerlist.toml.example")
	require.NoError(t, err)
	peers, err := ParseList(data, "http://10.0.0.1:8080")
	require.NoError(t, err)
	assert.Equal(t, []Peer{
		{URL: "http://10.0.0.2:8080", Role: RoleReplica},
		{URL: "http://10.0.0.9:8080", Role: RoleCache},
	}, peers)
}

func FuzzParseList(f *testing.F) {
	for _, s := range []string{
		"", "[[peers]]\nurl = \"http://a:1\"\n", "[[peers]]\nurl = \"https://b\"\nrole = \"cache\"\n",
		"[[peers]]\nurl = \"http://me:1\"\n", "peers = 3", "[[peers]]\nurl = \"http://a:1\"\n[[peers]]\nurl = \"http://a:1\"\n",
		"[[peers]]\nurl = \"\\u0000\"\n", "[peers]\nurl=1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		peers, err := ParseList([]byte(in), "http://me:1")
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, p := range peers {
			u, err := url.Parse(p.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				t.Fatalf("accepted a bad URL %q", p.URL)
			}
			if p.Role != RoleReplica && p.Role != RoleCache {
				t.Fatalf("accepted role %q", p.Role)
			}
			if p.URL == "http://me:1" || seen[p.URL] {
				t.Fatalf("me or a duplicate in %v", peers)
			}
			seen[p.URL] = true
		}
	})
}
