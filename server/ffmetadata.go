package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/golang/groupcache/lru"
	"golang.org/x/sync/singleflight"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
	"github.com/dtfc/dtfc/internal/httpstatus"
	"github.com/dtfc/dtfc/peer"
)

// The limits of one probe. ffprobe parses untrusted bytes: it runs with
// nothing but the file protocol, a time limit, an address-space limit and
// a bounded output.
const (
	// probeTimeout bounds one ffprobe run; the whole process group is
	// killed when it is reached.
	probeTimeout = 10 * time.Second
	// probeMemory is ffprobe's address-space limit (RLIMIT_AS). Loading
	// its shared libraries alone maps about 300 MiB on Debian 12, and
	// -threads 1 keeps decoder threads (and their stacks) from growing
	// with the core count.
	probeMemory = 1 << 30
	// probeMaxOutput is the most of ffprobe's JSON read; a larger answer
	// (thousands of streams or tags) is not served.
	probeMaxOutput = 1 << 20
	// probeCacheBytes bounds the answers kept in memory.
	probeCacheBytes = 16 << 20
	// probeQueueWait is how long a probe waits for one of the runs at
	// once (probeSlots) to end before the answer is 503.
	probeQueueWait = 2 * time.Second
	// probeMinScore: ffprobe's probe_score at or below which it only
	// guessed the format (AVPROBE_SCORE_RETRY: ffmpeg itself warns
	// "misdetection possible"). Random bytes come out as h263 (25) or
	// lrc (5); a JPEG scores 26, elementary streams 51, containers 100.
	probeMinScore = 25
)

// probedFormats are the demuxers ffprobe may use (-format_whitelist):
// single-file media containers, elementary streams, images and subtitle
// files. Left out are those that open other files a blob names (hls,
// dash, concat, imf, image2, vobsub's .sub, svg's references): with the
// file protocol allowed they would read the node's filesystem, and the
// answer would describe that file, not the blob
// (TestFFMetadataPlaylistReadsNoOtherFile). Left out too are those that
// read plain text or ANSI art as "video" (tty, ansi, bin, xbin, adf,
// idf): what they find in a file is not media.
var probedFormats = strings.Split(
	// containers
	"mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,asf,ogg,nut,mxf,rm,wtv,dv,"+
		// video streams
		"mpegvideo,m4v,h261,h263,h264,hevc,av1,obu,vc1,ivf,mjpeg,yuv4mpegpipe,"+
		// audio
		"wav,w64,mp3,aac,loas,flac,ac3,eac3,dts,dtshd,truehd,mlp,amr,amrnb,amrwb,aiff,caf,au,ape,wv,tta,mpc,mpc8,tak,dsf,oma,gsm,voc,xwma,qcp,"+
		// images
		"gif,apng,png_pipe,jpeg_pipe,webp_pipe,bmp_pipe,tiff_pipe,gif_pipe,jpegxl_pipe,j2k_pipe,qoi_pipe,psd_pipe,dpx_pipe,exr_pipe,ico,"+
		// subtitles
		"srt,ass,webvtt,microdvd,subviewer,sami,dvbsub,sup", ",")

// probed reports whether a format_name ffprobe reports (such as
// "mov,mp4,m4a,3gp,3g2,mj2") names a demuxer of probedFormats: the
// whitelist's second guard.
func probed(name string) bool {
	for n := range strings.SplitSeq(name, ",") {
		if slices.Contains(probedFormats, n) {
			return true
		}
	}
	return false
}

// mediaStreams are the kinds of stream that make a file media.
var mediaStreams = map[string]bool{"audio": true, "video": true, "subtitle": true}

// prober runs ffprobe on blobs and keeps its answers. A blob is
// immutable, so its answer is too: it is cached per ID, and concurrent
// requests for one ID share one run.
type prober struct {
	// program is looked up on PATH at every request, so installing
	// ffprobe needs no restart.
	program string
	timeout time.Duration
	flights singleflight.Group
	cache   *probeCache
	// runs counts the ffprobe processes started.
	runs atomic.Int64
	// slots bounds the runs at once (one per core, at least 2): requests
	// for distinct blobs do not share a run, and each may take a core
	// and 1 GiB of address space for 10 s.
	slots     chan struct{}
	queueWait time.Duration
}

func newProber() *prober {
	return &prober{program: "ffprobe", timeout: probeTimeout, cache: newProbeCache(probeCacheBytes),
		slots: make(chan struct{}, max(2, runtime.NumCPU())), queueWait: probeQueueWait}
}

// errProbeBusy: every run slot stayed taken for queueWait (503).
var errProbeBusy = httpstatus.Errorf(http.StatusServiceUnavailable, "too many ffprobe runs at once; try again")

// prober returns s's prober (made in New).
func (s *Server) prober() *prober { return s.ff }

// probeResult is ffprobe's verdict on a blob: the JSON answer, or why
// the blob is not media.
type probeResult struct {
	body     []byte
	notMedia string
}

// ffmetadata answers GET /{id}/ffmetadata: the blob's media metadata as
// ffprobe reports it ({"format": ..., "streams": [...]}), 422 when the
// blob is not media, 501 when ffprobe is not installed. A blob this node
// does not hold is read as GET reads it (from a peer, stored here) first:
// ffprobe needs a seekable file.
func (s *Server) ffmetadata(w http.ResponseWriter, r *http.Request) {
	id, ok := s.readableID(w, r)
	if !ok {
		return
	}
	p := s.prober()
	bin, err := exec.LookPath(p.program)
	if err != nil {
		s.writeError(w, r, httpstatus.Errorf(http.StatusNotImplemented, "ffprobe is not installed on this node"))
		return
	}
	ctx := r.Context()
	// The cache is used only for a blob this node holds: a blob deleted
	// since it was probed answers 404, as GET does.
	st, err := s.store.Stat(id)
	if err != nil && !errors.Is(err, blobstore.ErrNotFound) {
		s.writeError(w, r, err)
		return
	}
	held := err == nil && !st.Deleted
	if held {
		if res, ok := p.cache.get(id); ok {
			s.writeProbe(w, r, res)
			return
		}
	} else if err := s.fetchToProbe(ctx, w, r, id); err != nil {
		s.writeError(w, r, err)
		return
	}
	res, ok, err := s.probeShared(ctx, p, id, bin)
	if ok && held && errors.Is(err, blobstore.ErrNotFound) {
		// Its record said held but its file is gone: a delete racing
		// this request, or a corrupt file the scrubber set aside. Read it
		// as GET would (404 for a delete), once.
		if err := s.fetchToProbe(ctx, w, r, id); err != nil {
			s.writeError(w, r, err)
			return
		}
		res, ok, err = s.probeShared(ctx, p, id, bin)
	}
	switch {
	case !ok:
		// The client went away; the run finishes for the cache.
	case err != nil:
		if errors.Is(err, errProbeBusy) {
			w.Header().Set("Retry-After", "1")
		}
		s.writeError(w, r, err)
	default:
		s.writeProbe(w, r, res)
	}
}

// probeShared probes id, sharing the run with concurrent requests for
// it. The run is detached from the callers (one client going away does
// not fail the others); each caller waits on its own context, and ok is
// false when ctx ended first. Every caller holds a count in s.flight
// until the run has finished, so Server.Wait covers it.
func (s *Server) probeShared(ctx context.Context, p *prober, id dtfc.ID, bin string) (res probeResult, ok bool, err error) {
	s.flight.Add(1)
	ch := p.flights.DoChan(id.String(), func() (any, error) { return p.probe(s.store, id, bin) })
	select {
	case r := <-ch:
		s.flight.Done()
		if r.Err != nil {
			return probeResult{}, true, r.Err
		}
		return r.Val.(probeResult), true, nil
	case <-ctx.Done():
		go func() {
			<-ch
			s.flight.Done()
		}()
		return probeResult{}, false, nil
	}
}

// fetchToProbe makes this node hold id, as GET would read it: from a peer,
// waiting until the transfer is verified and stored. A node alone, or a
// request with ?nopeerload, answers 404 for a blob it does not hold.
func (s *Server) fetchToProbe(ctx context.Context, w http.ResponseWriter, r *http.Request, id dtfc.ID) error {
	b, err := s.open(ctx, id, peer.OpenOptions{LocalOnly: localOnly(r)})
	if err != nil {
		return s.openError(w, r, err)
	}
	defer b.Close()
	if b.Local() {
		return nil
	}
	if err := b.Wait(ctx); err != nil {
		return transferError(b.Source(), err)
	}
	return nil
}

func (s *Server) writeProbe(w http.ResponseWriter, r *http.Request, res probeResult) {
	if res.body == nil {
		s.writeError(w, r, httpstatus.Errorf(http.StatusUnprocessableEntity, "not media: %s", res.notMedia))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(res.body)))
	w.WriteHeader(http.StatusOK)
	w.Write(res.body)
}

// probe runs ffprobe (the program at bin) on the blob id this node holds.
// A verdict (media or not) is cached; a failure to run is not.
func (p *prober) probe(store Blobs, id dtfc.ID, bin string) (probeResult, error) {
	if res, ok := p.cache.get(id); ok {
		return res, nil
	}
	f, err := store.Open(id)
	if err != nil {
		return probeResult{}, err // a delete since the request's Stat: 404
	}
	defer f.Close()
	t := time.NewTimer(p.queueWait)
	defer t.Stop()
	select {
	case p.slots <- struct{}{}:
		defer func() { <-p.slots }()
	case <-t.C:
		return probeResult{}, errProbeBusy
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	out, err := p.run(ctx, bin, f.File)
	if err != nil {
		return probeResult{}, err
	}
	res := out.verdict()
	p.cache.add(id, res)
	return res, nil
}

// probeOutput is what one ffprobe run left.
type probeOutput struct {
	stdout, stderr *cappedBuffer
	exit           int // 0, the exit status, or -1 for a signal
}

// run runs ffprobe on the open file f. The file is passed as descriptor
// 3 and named file:/proc/self/fd/3: no blob path (which a concurrent delete
// could unlink) and no name that ffprobe could read as a URL or protocol;
// -protocol_whitelist file refuses every other protocol, also for files a
// playlist names. The address-space limit is set by a shell wrapper
// (`ulimit -v`, then exec): Go cannot set a child's rlimits, /bin/sh is
// always there and exec keeps the limit (dash sets it with prlimit64,
// which the systemd unit's SystemCallFilter=~@resources leaves allowed).
// Where the limit cannot be set, ffprobe is not run at all: the answer is
// a 500 that says so.
func (p *prober) run(ctx context.Context, bin string, f *os.File) (probeOutput, error) {
	script := `ulimit -v "$1" || exit 126; shift; exec "$@"`
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", script, "sh", strconv.Itoa(probeMemory>>10),
		bin, "-v", "error", "-threads", "1", "-protocol_whitelist", "file",
		"-format_whitelist", strings.Join(probedFormats, ","),
		"-print_format", "json", "-show_format", "-show_streams", "file:/proc/self/fd/3")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Env = []string{}
	cmd.Dir = "/"
	out := probeOutput{stdout: &cappedBuffer{max: probeMaxOutput}, stderr: &cappedBuffer{max: 4 << 10}}
	cmd.Stdout, cmd.Stderr = out.stdout, out.stderr
	// Its own process group, killed whole at the deadline.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	p.runs.Add(1)
	err := cmd.Run()
	if ctx.Err() != nil {
		return out, httpstatus.Errorf(http.StatusGatewayTimeout, "ffprobe did not finish within %v", p.timeout)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		out.exit = ee.ExitCode()
	default:
		return out, fmt.Errorf("running ffprobe: %w", err)
	}
	if out.exit == 126 || out.exit == 127 {
		// The limit could not be set, or the shell or the loader could
		// not start ffprobe: this node's fault, not the blob's.
		return out, fmt.Errorf("running ffprobe: exit status %d: %s", out.exit, out.stderr.firstLine())
	}
	return out, nil
}

// refusedFormat reads the demuxer's name out of ffprobe's refusal of a
// format not on -format_whitelist ("[hls @ 0x5633...] Format not on
// whitelist '...'").
func refusedFormat(line string) (string, bool) {
	ctx, _, ok := strings.Cut(line, "] Format not on whitelist")
	if !ok || !strings.HasPrefix(ctx, "[") {
		return "", false
	}
	name, _, _ := strings.Cut(ctx[1:], " @")
	return name, true
}

// verdict decides from a run whether the blob is media, and makes the
// answer: ffprobe's format (without its "filename", which names
// /proc/self/fd/3) and streams.
func (o probeOutput) verdict() probeResult {
	if o.exit != 0 {
		msg := strings.TrimPrefix(o.stderr.firstLine(), "file:/proc/self/fd/3: ")
		if name, ok := refusedFormat(msg); ok {
			msg = fmt.Sprintf("the format %s is not one this node probes", name)
		}
		if msg == "" {
			msg = fmt.Sprintf("ffprobe failed (exit status %d)", o.exit)
		}
		return probeResult{notMedia: msg}
	}
	if o.stdout.over {
		return probeResult{notMedia: fmt.Sprintf("ffprobe's answer is larger than %d bytes", probeMaxOutput)}
	}
	var raw struct {
		Format  map[string]json.RawMessage `json:"format"`
		Streams []json.RawMessage          `json:"streams"`
	}
	var parsed struct {
		Format struct {
			Name       string `json:"format_name"`
			ProbeScore *int   `json:"probe_score"`
		} `json:"format"`
		Streams []struct {
			CodecType string `json:"codec_type"`
		} `json:"streams"`
	}
	if err := json.Unmarshal(o.stdout.Bytes(), &raw); err != nil {
		return probeResult{notMedia: "ffprobe's answer is not JSON"}
	}
	if err := json.Unmarshal(o.stdout.Bytes(), &parsed); err != nil {
		return probeResult{notMedia: "ffprobe's answer is not JSON"}
	}
	f := parsed.Format
	switch {
	case raw.Format == nil:
		return probeResult{notMedia: "ffprobe found no format"}
	case !probed(f.Name):
		return probeResult{notMedia: fmt.Sprintf("the format %s is not one this node probes", f.Name)}
	case f.ProbeScore != nil && *f.ProbeScore <= probeMinScore:
		return probeResult{notMedia: fmt.Sprintf("ffprobe only guessed the format %s (probe score %d)", f.Name, *f.ProbeScore)}
	}
	media := false
	for _, st := range parsed.Streams {
		media = media || mediaStreams[st.CodecType]
	}
	if !media {
		return probeResult{notMedia: "no audio, video or subtitle stream"}
	}
	delete(raw.Format, "filename")
	if raw.Streams == nil {
		raw.Streams = []json.RawMessage{}
	}
	body, err := json.Marshal(map[string]any{"format": raw.Format, "streams": raw.Streams})
	if err != nil {
		return probeResult{notMedia: "ffprobe's answer is not JSON"}
	}
	return probeResult{body: append(body, '\n')}
}

// cappedBuffer keeps the first max bytes written to it and discards the
// rest, so a process is never blocked on a full pipe nor fills memory.
type cappedBuffer struct {
	bytes.Buffer
	max  int
	over bool
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	if room := c.max - c.Len(); len(p) > room {
		c.over = true
		c.Buffer.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.Buffer.Write(p)
}

func (c *cappedBuffer) firstLine() string {
	line, _, _ := strings.Cut(strings.TrimSpace(c.String()), "\n")
	return line
}

// probeCache keeps the latest answers up to a total size, least recently
// used dropped first.
type probeCache struct {
	mu    sync.Mutex
	lru   *lru.Cache // not safe for concurrent use: guarded by mu
	bytes int64
	max   int64
}

func newProbeCache(max int64) *probeCache {
	c := &probeCache{lru: lru.New(0), max: max}
	c.lru.OnEvicted = func(_ lru.Key, v any) { c.bytes -= v.(probeResult).size() }
	return c
}

// size is what an entry is charged: its bytes and a fixed overhead.
func (r probeResult) size() int64 { return int64(len(r.body)+len(r.notMedia)) + 256 }

func (c *probeCache) get(id dtfc.ID) (probeResult, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.lru.Get(id)
	if !ok {
		return probeResult{}, false
	}
	return v.(probeResult), true
}

func (c *probeCache) add(id dtfc.ID, r probeResult) {
	if r.size() > c.max {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.lru.Get(id); ok {
		return
	}
	c.lru.Add(id, r)
	c.bytes += r.size()
	for c.bytes > c.max {
		c.lru.RemoveOldest()
	}
}
