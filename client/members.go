package client

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"

	"github.com/dtfc/dtfc/api"
)

// Members lists the cluster's membership records (GET /_members).
func (c *Client) Members(ctx context.Context) ([]api.Member, error) {
	var ans struct {
		Members []api.Member `json:"members"`
	}
	err := c.callJSON(ctx, http.MethodGet, "/_members", &ans)
	return ans.Members, err
}

// RemoveMember removes the member reached at nodeURL from the cluster
// (DELETE /_members?url=...), through the first node that answers. A
// node that removes itself first waits until a replica accepted its
// whole feed (409 until then) unless force.
func (c *Client) RemoveMember(ctx context.Context, nodeURL string, force bool) (api.Member, error) {
	var ans struct {
		Member api.Member `json:"member"`
	}
	q := "/_members?url=" + url.QueryEscape(nodeURL)
	if force {
		q += "&force=1"
	}
	err := c.callJSON(ctx, http.MethodDelete, q, &ans)
	return ans.Member, err
}

// callJSON sends a request without a body to the first node that answers
// and decodes its 200 answer into out.
func (c *Client) callJSON(ctx context.Context, method, path string, out any) error {
	return c.each(ctx, func(base string) error {
		resp, err := c.do(ctx, method, base+path, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return answerError(resp)
		}
		return json.NewDecoder(resp.Body).Decode(out)
	})
}
