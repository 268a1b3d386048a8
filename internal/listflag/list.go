// Package listflag is the repeatable string flag, written once.
package listflag

import "strings"

// List is a flag.Value that gathers the uses of a repeatable flag into
// *Into.
//
// The zero value of each option is the plain repeatable flag: every use
// adds its value as it is.
type List struct {
	// Into is the list the flag fills.
	Into *[]string
	// Commas makes each use a comma-separated list: its items are trimmed
	// and the empty ones skipped.
	Commas bool
	// Replace makes the first use replace what Into held before (a
	// default, or what a config file said); later uses add.
	Replace bool

	used bool
}

// String returns the list, joined with commas.
func (l *List) String() string {
	if l.Into == nil {
		return ""
	}
	return strings.Join(*l.Into, ",")
}

// Set adds one use of the flag.
func (l *List) Set(s string) error {
	if l.Replace && !l.used {
		*l.Into = nil
	}
	l.used = true
	if !l.Commas {
		*l.Into = append(*l.Into, s)
		return nil
	}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l.Into = append(*l.Into, p)
		}
	}
	return nil
}
