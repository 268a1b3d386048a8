package server

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestContentType: the recorded type is the client's only when it is a
// short, valid media type; otherwise the extension's or the sniffed one.
func TestContentType(t *testing.T) {
	html := []byte("<!doctype html><title>x</title>")
	long := "text/html; x=" + strings.Repeat("a", 60000)
	tests := []struct {
		name, header, filename string
		head                   []byte
		want                   string
	}{
		{name: "client's type", header: "application/vnd.dtfc.test", want: "application/vnd.dtfc.test"},
		{name: "client's type with parameters", header: `text/plain; charset="iso-8859-1"`, want: "text/plain; charset=iso-8859-1"},
		{name: "255 bytes kept", header: "application/" + strings.Repeat("x", 255-len("application/")), want: "application/" + strings.Repeat("x", 255-len("application/"))},
		{name: "256 bytes ignored, sniffed", header: "application/" + strings.Repeat("x", 256-len("application/")), head: []byte("plain words"), want: "text/plain; charset=utf-8"},
		{name: "60 KB ignored for the extension", header: long, filename: "page.html", head: html, want: "text/html; charset=utf-8"},
		{name: "60 KB ignored, sniffed", header: long, filename: "page", head: html, want: "text/html; charset=utf-8"},
		{name: "60 KB ignored, binary", header: long, head: []byte{0, 1, 2, 3}, want: "application/octet-stream"},
		{name: "not a media type", header: "this is not; a type", filename: "a.png", want: "image/png"},
		{name: "a lone token is no media type", header: "attachment", filename: "a.png", want: "image/png"},
		{name: "empty subtype", header: "text/", filename: "a.png", want: "image/png"},
		{name: "bad parameter", header: "text/plain; =x", filename: "a.png", want: "image/png"},
		{name: "quoted parameter kept", header: "text/plain; p=\"" + strings.Repeat(`\"`, 100) + "\"", filename: "a.png", want: "text/plain; p=\"" + strings.Repeat(`\"`, 100) + "\""},
		{name: "non-ASCII parameter", header: "text/plain; p=é", filename: "a.png", want: "image/png"},
		// 246 bytes as sent; RFC 2231 encoding (p*=utf-8''%C3%A9...) makes
		// 700: beyond the bound once formatted.
		{name: "formatting would pass the bound", header: "text/plain; p=\"" + strings.Repeat("é", 115) + "\"", filename: "a.png", want: "image/png"},
		{name: "generic", header: "application/octet-stream", filename: "a.png", want: "image/png"},
		{name: "nothing", head: html, want: "text/html; charset=utf-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := contentType(tt.header, tt.filename, tt.head)
			assert.Equal(t, tt.want, got)
			assert.LessOrEqual(t, len(got), maxContentType)
		})
	}
}
