package dtfc

import (
	"encoding/json"
	"testing"
)

func TestParseRole(t *testing.T) {
	for in, want := range map[string]Role{"": RoleReplica, "replica": RoleReplica, "cache": RoleCache, "archive": RoleArchive} {
		got, err := ParseRole(in)
		if err != nil || got != want {
			t.Errorf("ParseRole(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"Cache", "Archive", " replica"} {
		if _, err := ParseRole(in); err == nil {
			t.Errorf("ParseRole(%q): no error", in)
		}
	}
	var v struct{ Role Role }
	if err := json.Unmarshal([]byte(`{"Role":"cache"}`), &v); err != nil || !v.Role.IsCache() {
		t.Errorf("JSON cache: %q, %v", v.Role, err)
	}
	if err := json.Unmarshal([]byte(`{"Role":"primary"}`), &v); err == nil {
		t.Error("JSON primary: no error")
	}
}
