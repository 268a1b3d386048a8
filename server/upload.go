package server

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/httpstatus"
	"github.com/dtfc/dtfc/internal/iox"
)

// UploadResponse is the body of a successful upload.
type UploadResponse struct {
	SHA512   string `json:"sha512"`
	Size     int64  `json:"size"`
	Filename string `json:"filename"`
}

// maxFilenameLen bounds a recorded filename (bytes), as most filesystems do.
const maxFilenameLen = 255

// upload serves PUT /{filename} and POST /.
func (s *Server) upload(w http.ResponseWriter, r *http.Request) {
	if err := s.doUpload(w, r); err != nil {
		s.metrics.uploads.WithLabelValues("failed").Inc()
		if errors.Is(err, blobstore.ErrDenyUnknown) {
			w.Header().Set("Retry-After", "5")
		}
		s.writeError(w, r, err)
	}
}

func (s *Server) doUpload(w http.ResponseWriter, r *http.Request) error {
	if !s.store.DenyKnown() {
		// Checked again at the commit; here so the body is not sent for
		// nothing.
		return blobstore.ErrDenyUnknown
	}
	up, err := s.parseUpload(r)
	if err != nil {
		return err
	}
	body, err := up.openBody(w, r, s.cfg.IdleTimeout)
	if err != nil {
		return err
	}
	if err := checkFilename(up.filename); err != nil {
		return err
	}
	if max := s.cfg.MaxUploadBytes; max > 0 && r.ContentLength > max {
		return httpstatus.Errorf(http.StatusRequestEntityTooLarge, "upload of %d bytes exceeds the limit of %d bytes", r.ContentLength, max)
	}
	res, err := s.storeUpload(up, body, r.ContentLength)
	if err != nil {
		return err
	}
	id := res.State.ID.String()
	status := http.StatusOK
	if res.Created {
		status = http.StatusCreated
		s.metrics.uploads.WithLabelValues("created").Inc()
	} else {
		s.metrics.uploads.WithLabelValues("existing").Inc()
	}
	if up.replicas > 1 {
		if err := s.waitReplicas(r, res.State.ID, res.Seq, up.replicas); err != nil {
			return err
		}
	}
	w.Header().Set("Location", s.cfg.Me+"/"+id)
	writeJSON(w, status, UploadResponse{SHA512: id, Size: res.State.Size, Filename: up.filename})
	return nil
}

// upload is what a request says of the file it uploads.
type upload struct {
	expected dtfc.ID // the ID it must hash to; zero if not said
	filename string
	ctype    string
	replicas int
}

// parseUpload reads the request's path, headers and query, and refuses
// at once, before a byte of the body is read, what it can: a bad or
// contradicted ID, more replicas than the cluster has, a blocked ID.
func (s *Server) parseUpload(r *http.Request) (upload, error) {
	up := upload{ctype: r.Header.Get("Content-Type")}
	if r.Method == http.MethodPut {
		name := strings.TrimPrefix(r.URL.Path, "/")
		if strings.HasPrefix(name, "_") {
			// The path's rule (API.md); a filename given as metadata
			// (POST) may begin with "_".
			return up, httpstatus.Errorf(http.StatusBadRequest, "paths beginning with _ are reserved for the API; nothing was stored (POST / with ?filename= records such a name)")
		}
		if dtfc.LooksLikeID(name) {
			up.expected, _ = dtfc.ParseID(name)
		} else {
			up.filename = name
		}
	} else {
		up.filename = r.Header.Get("X-Filename")
		if up.filename == "" {
			up.filename = r.URL.Query().Get("filename")
		}
	}
	if h := r.Header.Get("X-Content-SHA512"); h != "" {
		id, err := dtfc.ParseID(strings.TrimSpace(h))
		if err != nil {
			return up, httpstatus.Errorf(http.StatusBadRequest, "X-Content-SHA512: %v", err)
		}
		if !up.expected.IsZero() && id != up.expected {
			return up, httpstatus.Errorf(http.StatusBadRequest, "X-Content-SHA512 %s contradicts the ID in the path %s", id, up.expected)
		}
		up.expected = id
	}
	var err error
	if up.replicas, err = replicasParam(r); err != nil {
		return up, err
	}
	if have := s.replicas(); up.replicas > have {
		return up, httpstatus.Errorf(http.StatusBadRequest, "replicas=%d: the cluster has %d replica(s) (this node counted if it is one, a cache is not); nothing stored", up.replicas, have)
	}
	if !up.expected.IsZero() {
		if err := s.checkDenied(up.expected, true); err != nil {
			return up, err
		}
	}
	return up, nil
}

// openBody returns the file's bytes: the request body with an idle
// deadline on every read, or a browser form's first file part (whose
// name and type then fill in what the request did not say).
func (up *upload) openBody(w http.ResponseWriter, r *http.Request, idle time.Duration) (io.Reader, error) {
	body := io.Reader(&iox.IdleReader{R: r.Body, Deadline: http.NewResponseController(w), Idle: idle, TimeoutErr: httpstatus.ErrIdleTimeout})
	mt, params, err := mime.ParseMediaType(up.ctype)
	if err != nil || mt != "multipart/form-data" || r.Method != http.MethodPost {
		return body, nil
	}
	part, err := firstFilePart(multipart.NewReader(body, params["boundary"]))
	if err != nil {
		return nil, err
	}
	if up.filename == "" {
		up.filename = part.FileName()
	}
	up.ctype = part.Header.Get("Content-Type")
	return part, nil
}

// storeUpload streams body into the store and commits it.
func (s *Server) storeUpload(up upload, body io.Reader, size int64) (blobstore.Result, error) {
	bw, err := s.store.NewWriter(blobstore.WriterOptions{MaxBytes: s.cfg.MaxUploadBytes, Size: size})
	if err != nil {
		return blobstore.Result{}, err
	}
	defer bw.Close()
	start := time.Now()
	n, err := bw.ReadFrom(clientBody{body})
	s.metrics.bytesIn.Add(float64(n))
	if err != nil {
		return blobstore.Result{}, uploadReadError(err, s.cfg.IdleTimeout)
	}
	received := time.Now()
	release, err := s.admit()
	if err != nil {
		return blobstore.Result{}, err
	}
	defer release()
	res, err := bw.Commit(blobstore.Upload{
		Expected:    up.expected,
		ContentType: contentType(up.ctype, up.filename, bw.Head()),
		Filename:    up.filename,
	})
	if err != nil {
		return blobstore.Result{}, errorsAsDenied(err, true)
	}
	s.log.Debug("upload stored", "id", res.State.ID.String(), "bytes", n, "receive", received.Sub(start), "commit", time.Since(received))
	return res, nil
}

func replicasParam(r *http.Request) (int, error) {
	v := r.URL.Query().Get("replicas")
	if v == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1000 {
		return 0, httpstatus.Errorf(http.StatusBadRequest, "replicas=%q: want a whole number from 1", v)
	}
	return n, nil
}

// uploadReadError explains a failure to read the body. A client that stops
// sending is told so (408); a body that ends early is a bad request.
func uploadReadError(err error, idle time.Duration) error {
	switch {
	case errors.Is(err, blobstore.ErrTooLarge), errors.Is(err, blobstore.ErrNoSpace):
		return err
	case errors.Is(err, httpstatus.ErrIdleTimeout):
		return fmt.Errorf("%w (%s)", httpstatus.ErrIdleTimeout, idle)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return httpstatus.Errorf(http.StatusBadRequest, "upload body ended before its announced length")
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Errorf("%w: %v", blobstore.ErrTooLarge, err)
	}
	var he *httpstatus.Error
	var be bodyError
	if errors.As(err, &he) || !errors.As(err, &be) {
		// Said already, or the store's failure (500), not the client's.
		return err
	}
	return httpstatus.Errorf(http.StatusBadRequest, "reading the upload body: %v", be.err)
}

// clientBody marks the errors of reading the request body, so that
// uploadReadError tells them from the store's.
type clientBody struct{ r io.Reader }

func (c clientBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		err = bodyError{err}
	}
	return n, err
}

// bodyError is an error of reading the request body.
type bodyError struct{ err error }

func (e bodyError) Error() string { return e.err.Error() }
func (e bodyError) Unwrap() error { return e.err }

func firstFilePart(mr *multipart.Reader) (*multipart.Part, error) {
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return nil, httpstatus.Errorf(http.StatusBadRequest, "multipart upload has no file part")
		}
		if err != nil {
			if errors.Is(err, httpstatus.ErrIdleTimeout) {
				return nil, err
			}
			return nil, httpstatus.Errorf(http.StatusBadRequest, "reading multipart upload: %v", err)
		}
		if p.FileName() != "" || p.FormName() == "file" {
			return p, nil
		}
		p.Close()
	}
}

// checkFilename refuses names that could only confuse: the filename is
// metadata (never a path on disk), but it is echoed in headers and JSON.
func checkFilename(name string) error {
	switch {
	case len(name) > maxFilenameLen:
		return httpstatus.Errorf(http.StatusBadRequest, "filename longer than %d bytes", maxFilenameLen)
	case !utf8.ValidString(name):
		return httpstatus.Errorf(http.StatusBadRequest, "filename is not valid UTF-8")
	case strings.ContainsAny(name, `/\`):
		return httpstatus.Errorf(http.StatusBadRequest, "filename %q contains a path separator; give a plain file name", name)
	case name == "." || name == "..":
		return httpstatus.Errorf(http.StatusBadRequest, "filename %q is not a file name", name)
	}
	for _, c := range name {
		if unicode.IsControl(c) {
			return httpstatus.Errorf(http.StatusBadRequest, "filename contains a control character")
		}
	}
	return nil
}

// maxContentType bounds a recorded Content-Type (bytes), like a filename:
// it is sent with every download and, inside the state header, with every
// node-to-node transfer, where proxies and peers refuse long headers.
const maxContentType = 255

// contentType chooses the type recorded for an upload: the client's, if it
// is a valid media type (type/subtype), at most maxContentType bytes, and
// more precise than "bytes"; else the filename extension's; else what the
// first bytes look like.
func contentType(header, filename string, head []byte) string {
	if t := clientType(header); t != "" {
		return t
	}
	if ext := path.Ext(filename); ext != "" {
		if t := mime.TypeByExtension(ext); t != "" && len(t) <= maxContentType {
			return t
		}
	}
	return http.DetectContentType(head)
}

// clientType is the client's Content-Type as it would be recorded, or ""
// when it is to be ignored: too long, not a media type, or generic.
func clientType(header string) string {
	if len(header) > maxContentType {
		return ""
	}
	mt, params, err := mime.ParseMediaType(header)
	if err != nil || !strings.Contains(mt, "/") {
		// ParseMediaType also takes a lone token ("attachment"), which is
		// a disposition, not a media type.
		return ""
	}
	switch mt {
	case "application/octet-stream", "application/x-www-form-urlencoded", "multipart/form-data":
		return ""
	}
	// Formatting may quote parameters: the bound holds for what is kept.
	if t := mime.FormatMediaType(mt, params); len(t) <= maxContentType {
		return t
	}
	return ""
}
