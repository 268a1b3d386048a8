package dtfc

// State is what a node knows of one ID: the latest operation on it. Every
// upload and every delete is an operation stamped with a hybrid logical clock
// reading and the identity of the node that performed it; per ID, the state
// with the greatest (Clock, Node) wins everywhere (last writer wins), so an
// old upload that arrives late never undoes a newer delete.
type State struct {
	ID      ID        `json:"sha512"`
	Deleted bool      `json:"deleted,omitempty"`
	Clock   Timestamp `json:"clock"`
	// Node is the identity of the node that performed the operation. It
	// breaks ties between equal clocks and is not a URL: a node may be known
	// to its peers by URLs different from its own.
	Node string `json:"node"`
	// Size, ContentType and Filename describe an upload; a delete carries
	// none of them.
	Size        int64  `json:"size,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	Filename    string `json:"filename,omitempty"`
}

// Newer reports whether s wins over o under the last-writer-wins rule: a
// greater clock, or an equal clock and a greater node identity. A state is
// not newer than itself, so applying a state twice changes nothing.
func (s State) Newer(o State) bool {
	if s.Clock != o.Clock {
		return s.Clock > o.Clock
	}
	return s.Node > o.Node
}
