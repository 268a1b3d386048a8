package listflag

import (
	"flag"
	"io"
	"slices"
	"testing"
)

func TestList(t *testing.T) {
	for _, tc := range []struct {
		name            string
		commas, replace bool
		start           []string
		args            []string
		want            []string
	}{
		{"plain", false, false, nil, []string{"-f", "a", "-f", " b,c "}, []string{"a", " b,c "}},
		{"plain adds to the start", false, false, []string{"x"}, []string{"-f", "a"}, []string{"x", "a"}},
		{"commas", true, false, nil, []string{"-f", "a, b,,", "-f", "c"}, []string{"a", "b", "c"}},
		{"commas add to the start", true, false, []string{"x"}, []string{"-f", "a"}, []string{"x", "a"}},
		{"replace", true, true, []string{"x", "y"}, []string{"-f", "a", "-f", "b,c"}, []string{"a", "b", "c"}},
		{"replace unused keeps the start", true, true, []string{"x"}, nil, []string{"x"}},
		{"replace with an empty use", true, true, []string{"x"}, []string{"-f", ""}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := slices.Clone(tc.start)
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			fs.Var(&List{Into: &got, Commas: tc.commas, Replace: tc.replace}, "f", "")
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if s, want := fs.Lookup("f").Value.String(), joined(tc.want); s != want {
				t.Fatalf("String() = %q, want %q", s, want)
			}
		})
	}
	if s := (&List{}).String(); s != "" {
		t.Fatalf("zero List String() = %q", s)
	}
}

func joined(l []string) string {
	s := ""
	for i, e := range l {
		if i > 0 {
			s += ","
		}
		s += e
	}
	return s
}
