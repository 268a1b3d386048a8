package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/dtfc/dtfc"
)

// ListedBlob is a blob as GET /_blobs lists it.
type ListedBlob struct {
	ID          dtfc.ID `json:"sha512"`
	Size        int64   `json:"size"`
	ContentType string  `json:"content_type,omitempty"`
	Filename    string  `json:"filename,omitempty"`
	// Uploaded is when the upload that holds the ID was made, by the
	// clock of the node that made it (millisecond precision). An upload
	// of bytes already held is a new upload.
	Uploaded time.Time `json:"uploaded"`
}

// ListOptions choose a page of List.
type ListOptions struct {
	// After is the ID the page starts after: the previous page's Next.
	// If zero, the page starts at the first ID.
	After dtfc.ID
	// Limit is the most blobs the page holds. If zero, the node's
	// default (1000); at most 10000.
	Limit int
}

// ListPage is one page of a node's blobs.
type ListPage struct {
	// Blobs are in ID order. A page may hold fewer than Limit blobs, even
	// none, while Next is set.
	Blobs []ListedBlob
	// Next is the After of the next page; zero once the listing is
	// complete.
	Next dtfc.ID
	// Node is the URL of the node that answered.
	Node string
	// Date is the node's clock when it answered (its Date header, to the
	// second), zero if it sent none.
	Date time.Time
}

// List returns a page of the blobs the first reachable node holds (GET
// /_blobs): live blobs only, in ID order. A replica holds the whole
// collection; a cache only what it holds. It needs the write token when
// the node has one.
func (c *Client) List(ctx context.Context, opts ListOptions) (ListPage, error) {
	q := url.Values{}
	if !opts.After.IsZero() {
		q.Set("after", opts.After.String())
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	var page ListPage
	err := c.each(ctx, func(base string) error {
		u := base + "/_blobs"
		if len(q) > 0 {
			u += "?" + q.Encode()
		}
		resp, err := c.do(ctx, http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return answerError(resp)
		}
		var body struct {
			Blobs []ListedBlob `json:"blobs"`
			Next  string       `json:"next"`
		}
		// 10000 entries of a few hundred bytes at most.
		if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&body); err != nil {
			return fmt.Errorf("%s: %w", u, err)
		}
		page = ListPage{Blobs: body.Blobs, Node: base}
		if body.Next != "" {
			if page.Next, err = dtfc.ParseID(body.Next); err != nil {
				return fmt.Errorf("%s: next: %w", u, err)
			}
		}
		if d, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
			page.Date = d
		}
		return nil
	})
	return page, err
}
