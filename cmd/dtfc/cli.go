package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/client"
	"github.com/dtfc/dtfc/internal/listflag"
)

// clientFlags registers the flags every client command shares.
func clientFlags(name string) (*flag.FlagSet, func() (*client.Client, error)) {
	fs := flag.NewFlagSet("dtfc "+name, flag.ContinueOnError)
	var servers []string
	serverFlag := &listflag.List{Into: &servers, Commas: true} // repeatable, also takes commas
	token := fs.String("token", os.Getenv("DTFC_TOKEN"), "write token (default $DTFC_TOKEN)")
	ca := fs.String("ca", os.Getenv("DTFC_CA"), "PEM CA bundle to verify https nodes (default $DTFC_CA, else the system roots)")
	fs.Var(serverFlag, "server", "node URL; repeat (or separate with commas) to fall back to others (default $DTFC_SERVER or http://localhost:8080)")
	return fs, func() (*client.Client, error) {
		if len(servers) == 0 {
			serverFlag.Set(os.Getenv("DTFC_SERVER"))
		}
		if len(servers) == 0 {
			servers = []string{"http://localhost:8080"}
		}
		opts := client.Options{Token: *token}
		if *ca != "" {
			pem, err := os.ReadFile(*ca)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s: no PEM certificate in it", *ca)
			}
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
			opts.HTTPClient = &http.Client{Transport: tr}
		}
		return client.New(servers, opts)
	}
}

// interleaved lets flags follow positional arguments ("get ID -o FILE").
func interleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageErr(err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
		if pos[len(pos)-1] == "--" {
			return append(pos[:len(pos)-1], args...), nil
		}
	}
}

func cmdPut(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs, mk := clientFlags("put")
	replicas := fs.Int("replicas", 0, "answer only once this many replicas hold each file")
	name := fs.String("name", "", "filename to record (default: the file's base name)")
	files, err := interleaved(fs, args)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return usagef("no file given (use - for standard input)")
	}
	c, err := mk()
	if err != nil {
		return err
	}
	var failed int
	for _, path := range files {
		if err := putOne(ctx, c, path, *name, *replicas, stdin, stdout, stderr); err != nil {
			fmt.Fprintf(stderr, "dtfc put: %s: %v\n", path, err)
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d uploads failed", failed, len(files))
	}
	return nil
}

func putOne(ctx context.Context, c *client.Client, path, name string, replicas int, stdin io.Reader, stdout, stderr io.Writer) error {
	var r io.Reader = stdin
	size := int64(0)
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if fi.IsDir() {
			return errors.New("is a directory")
		}
		r, size = f, fi.Size()
		if name == "" {
			name = filepath.Base(path)
		}
	}
	var body io.Reader = r
	if pb := newProgress(stderr, name, size); pb != nil {
		defer pb.done()
		body = pb.wrap(r)
	}
	res, err := c.Put(ctx, body, client.PutOptions{Filename: name, Replicas: replicas, Size: size})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, res.ID)
	return nil
}

func cmdGet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, mk := clientFlags("get")
	out := fs.String("o", "", "write to this file instead of standard output (written only once verified)")
	pos, err := interleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one ID")
	}
	id, err := dtfc.ParseID(pos[0])
	if err != nil {
		return err
	}
	if *out != "" && *out != "-" {
		// Checked before the download, not found at its end.
		if fi, err := os.Stat(*out); err == nil && fi.IsDir() {
			return fmt.Errorf("-o %s is a directory: name the file to write", *out)
		}
		if fi, err := os.Stat(filepath.Dir(*out)); err != nil || !fi.IsDir() {
			return fmt.Errorf("-o %s: the directory %s does not exist", *out, filepath.Dir(*out))
		}
	}
	c, err := mk()
	if err != nil {
		return err
	}
	rc, err := c.Get(ctx, id)
	if err != nil {
		return err
	}
	defer rc.Close()
	if *out == "" || *out == "-" {
		// Bytes reach stdout as they come; a mismatch is reported (and
		// the exit status is 1) when the end is reached.
		_, err = io.Copy(stdout, rc)
		return err
	}
	// Write beside the target and rename only once the hash matched, so a
	// corrupt download never takes the file's name.
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".dtfc-get-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	var src io.Reader = rc
	if pb := newProgress(stderr, filepath.Base(*out), -1); pb != nil {
		defer pb.done()
		src = pb.wrap(rc)
	}
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), *out)
}

func cmdRm(ctx context.Context, args []string, stdout io.Writer) error {
	fs, mk := clientFlags("rm")
	ids, err := interleaved(fs, args)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return usagef("no ID given")
	}
	c, err := mk()
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range ids {
		id, err := dtfc.ParseID(s)
		if err == nil {
			err = c.Delete(ctx, id)
		}
		if errors.Is(err, client.ErrNotFound) {
			err = errors.New("not found on the node or any peer it reached")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s, err))
			continue
		}
		fmt.Fprintln(stdout, "deleted", id)
	}
	return errors.Join(errs...)
}

func cmdStatus(ctx context.Context, args []string, stdout io.Writer) error {
	fs, mk := clientFlags("status")
	if _, err := interleaved(fs, args); err != nil {
		return err
	}
	c, err := mk()
	if err != nil {
		return err
	}
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(st)
}

// cmdLeave removes a node from the cluster: by default the --server node
// itself (the URL its members know it by, its --me); with --url, another
// one, e.g. a node that is down, asked of any member given as --server.
func cmdLeave(ctx context.Context, args []string, stdout io.Writer) error {
	fs, mk := clientFlags("leave")
	nodeURL := fs.String("url", "", "the node to remove (default: the --server node itself)")
	force := fs.Bool("force", false, "leave even though no replica has taken all of the node's operations yet (what only it holds stays out of the cluster)")
	if _, err := interleaved(fs, args); err != nil {
		return err
	}
	c, err := mk()
	if err != nil {
		return err
	}
	if *nodeURL == "" {
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		*nodeURL = st.Node
	}
	m, err := c.RemoveMember(ctx, *nodeURL, *force)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed %s (node %s) from the cluster; its members stop pushing to it within seconds\n", m.URL, m.Node)
	return nil
}

// progress draws a one-line progress bar on a terminal.
type progress struct {
	w     io.Writer
	name  string
	total int64
	n     int64
	start time.Time
	last  time.Time
}

// newProgress returns nil unless w is a terminal.
func newProgress(w io.Writer, name string, total int64) *progress {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return &progress{w: w, name: name, total: total, start: time.Now()}
}

func (p *progress) wrap(r io.Reader) io.Reader { return &progressReader{r: r, p: p} }

type progressReader struct {
	r io.Reader
	p *progress
}

func (pr *progressReader) Read(b []byte) (int, error) {
	n, err := pr.r.Read(b)
	pr.p.add(int64(n))
	return n, err
}

func (p *progress) add(n int64) {
	p.n += n
	if time.Since(p.last) > 100*time.Millisecond {
		p.last = time.Now()
		p.draw()
	}
}

func (p *progress) draw() {
	rate := float64(p.n) / max(time.Since(p.start).Seconds(), 1e-3)
	if p.total > 0 {
		frac := float64(p.n) / float64(p.total)
		bar := strings.Repeat("#", int(frac*30)) + strings.Repeat(".", 30-int(frac*30))
		fmt.Fprintf(p.w, "\r%-24.24s [%s] %5.1f%% %s/s ", p.name, bar, frac*100, human(rate))
	} else {
		fmt.Fprintf(p.w, "\r%-24.24s %s %s/s ", p.name, human(float64(p.n)), human(rate))
	}
}

func (p *progress) done() {
	p.draw()
	fmt.Fprintln(p.w)
}

func human(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", b, units[i])
}
