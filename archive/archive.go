package archive

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/dtfc/dtfc"
	"github.com/dtfc/dtfc/blobstore"
)

// Errors of an archive, matched with errors.Is.
var (
	// ErrNotFound: the object (a blob, a state record, a log entry) is
	// not in the bucket.
	ErrNotFound = errors.New("archive: not found")
	// ErrExists: a write-once object already exists under that key.
	ErrExists = errors.New("archive: object already exists")
	// ErrNoBucket: the bucket does not exist.
	ErrNoBucket = errors.New("the bucket does not exist")
	// ErrCredentials: the server refused the credentials (unknown key,
	// wrong secret, or no permission on the bucket).
	ErrCredentials = errors.New("the server refused the credentials")
	// ErrBadRecord: a record's body is not JSON of its kind, or does not
	// match its key. Reading it again gives the same answer.
	ErrBadRecord = errors.New("archive: record not valid")
)

// DefaultRegion is the region of an entry that sets none.
const DefaultRegion = "us-east-1"

// DefaultPartSize is the size above which a blob is uploaded in parts,
// and the size of each part.
const DefaultPartSize = 64 << 20

// Config says where a bucket is and how to reach it. Only Bucket is
// required.
type Config struct {
	// Bucket is the bucket's name.
	Bucket string
	// Prefix is the key prefix everything lives under, without leading
	// or trailing slashes. If empty, keys start at the bucket's root.
	Prefix string
	// Endpoint is the server's URL. If empty, AWS itself (by Region).
	Endpoint string
	// Region is the signing region. If empty, it defaults to us-east-1.
	Region string
	// PathStyle addresses the bucket in the path rather than the host
	// name (most non-AWS servers want it).
	PathStyle bool
	// AccessKeyID and SecretAccessKeyFile (a file holding the secret)
	// are static credentials. If AccessKeyID is empty, the AWS standard
	// chain is used (environment, shared files, instance roles).
	AccessKeyID         string
	SecretAccessKeyFile string
	// PartSize is the size above which a blob is uploaded in parts, each
	// of this size. If zero, it defaults to DefaultPartSize.
	PartSize int64
	// HTTPClient sends the requests. If nil, the SDK's default client
	// (which honours AWS_CA_BUNDLE and the like).
	HTTPClient *http.Client
	// Counters receives the blob bytes written to and read from the
	// bucket. If nil, the archive counts into counters of its own.
	Counters *Counters
	// Wrap, if set, wraps the client that sends the requests (a watch
	// over each request's progress, for one).
	Wrap func(Doer) Doer
}

// Doer sends an HTTP request (an *http.Client is one).
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// Counters count the blob bytes an archive moved. Their methods are safe
// for concurrent use; a zero Counters is ready.
type Counters struct {
	written atomic.Int64
	read    atomic.Int64
}

// Written is the blob bytes the server accepted: each whole blob, each
// part of a blob uploaded in parts (state records and logs are not
// counted).
func (c *Counters) Written() int64 { return c.written.Load() }

// Read is the blob bytes read from the bucket (verified by the reader,
// which may refuse them).
func (c *Counters) Read() int64 { return c.read.Load() }

// Archive is a bucket (under a prefix) holding blobs, their state
// records and the writers' change logs. Its methods are safe for
// concurrent use. It never deletes an object.
type Archive struct {
	client   *s3.Client
	bucket   string
	prefix   string // "" or "<prefix>/"
	partSize int64
	keyID    string // scrubbed from every error message
	counters *Counters
}

// Counters returns the archive's byte counters.
func (a *Archive) Counters() *Counters { return a.counters }

// New returns the archive of cfg. It sends no request (see Check).
func New(ctx context.Context, cfg Config) (*Archive, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("archive: no bucket")
	}
	region := cfg.Region
	if region == "" {
		region = DefaultRegion
	}
	opts := []func(*config.LoadOptions) error{config.WithRegion(region)}
	if cfg.HTTPClient != nil {
		opts = append(opts, config.WithHTTPClient(cfg.HTTPClient))
	}
	if cfg.AccessKeyID != "" {
		if cfg.SecretAccessKeyFile == "" {
			return nil, errors.New("archive: access_key_id is set but secret_access_key_file is not")
		}
		b, err := os.ReadFile(cfg.SecretAccessKeyFile)
		if err != nil {
			// The path, never the content.
			return nil, fmt.Errorf("archive: reading secret_access_key_file: %w", err)
		}
		secret := strings.TrimSpace(string(b))
		if secret == "" {
			return nil, fmt.Errorf("archive: secret_access_key_file %s is empty", cfg.SecretAccessKeyFile)
		}
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, secret, "")))
	} else if cfg.SecretAccessKeyFile != "" {
		return nil, errors.New("archive: secret_access_key_file is set but access_key_id is not")
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("archive: loading the AWS configuration: %w", err)
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Wrap != nil {
			o.HTTPClient = cfg.Wrap(o.HTTPClient)
		}
		o.UsePathStyle = cfg.PathStyle
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			// Non-AWS servers differ in which checksums they accept on
			// every request; this archive sends the one it wants
			// (SHA-512 from the ID) itself, and verifies what it reads
			// by hashing it.
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		}
	})
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	part := cfg.PartSize
	if part <= 0 {
		part = DefaultPartSize
	}
	counters := cfg.Counters
	if counters == nil {
		counters = &Counters{}
	}
	return &Archive{client: client, bucket: cfg.Bucket, prefix: prefix, partSize: part, keyID: cfg.AccessKeyID, counters: counters}, nil
}

// Check tells whether the bucket is there and the credentials work: a
// HeadBucket, then a listing of at most one key (HeadBucket's answers
// carry no error code, so the listing tells a missing bucket from
// refused credentials). Its error wraps ErrNoBucket or ErrCredentials
// when it is one of them.
func (a *Archive) Check(ctx context.Context) error {
	_, herr := a.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(a.bucket)})
	_, lerr := a.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(a.bucket), Prefix: aws.String(a.prefix), MaxKeys: aws.Int32(1)})
	if herr == nil && lerr == nil {
		return nil
	}
	err := lerr
	if err == nil {
		err = herr
	}
	switch code, status := errorCode(err); {
	case code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "AccessDenied" ||
		code == "InvalidClientTokenId" || code == "ExpiredToken" || code == "XAdminUserNotFound" ||
		status == http.StatusForbidden || status == http.StatusUnauthorized:
		if code == "" {
			code = strconv.Itoa(status)
		}
		return fmt.Errorf("bucket %q: %w (%s)", a.bucket, ErrCredentials, a.scrub(code))
	case code == "NoSuchBucket" || status == http.StatusNotFound:
		return fmt.Errorf("bucket %q: %w", a.bucket, ErrNoBucket)
	}
	return fmt.Errorf("bucket %q: %s", a.bucket, a.scrub(err.Error()))
}

// errorCode returns the S3 error code and HTTP status of err, if any.
func errorCode(err error) (string, int) {
	var code string
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return code, re.HTTPStatusCode()
	}
	return code, 0
}

// scrub removes the access key ID from a message (the secret is never in
// one: the SDK only signs with it).
func (a *Archive) scrub(s string) string {
	if a.keyID == "" {
		return s
	}
	return strings.ReplaceAll(s, a.keyID, "<access key id>")
}

// wrap turns an SDK error into one of this package's, with no
// credentials in its message.
func (a *Archive) wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	code, status := errorCode(err)
	switch {
	case code == "PreconditionFailed" || status == http.StatusPreconditionFailed:
		return fmt.Errorf("archive: %s %s: %w", op, key, ErrExists)
	case code == "NoSuchKey" || code == "NotFound" || status == http.StatusNotFound && code != "NoSuchBucket":
		return fmt.Errorf("archive: %s %s: %w", op, key, ErrNotFound)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("archive: %s %s: %w", op, key, err)
	}
	return fmt.Errorf("archive: %s %s: %s", op, key, a.scrub(err.Error()))
}

func shard(id dtfc.ID) string {
	h := id.String()
	return h[0:2] + "/" + h[2:4] + "/" + h
}

// BlobKey is the key of blob id's object.
func (a *Archive) BlobKey(id dtfc.ID) string { return a.prefix + "blobs/" + shard(id) }

// statesDir is the key prefix of id's state records.
func (a *Archive) statesDir(id dtfc.ID) string { return a.prefix + "states/" + shard(id) + "/" }

// StateKey is the key of the record of st: its clock (16 hex digits,
// so that keys sort by clock) and the node that performed it.
func (a *Archive) StateKey(st dtfc.State) string {
	return a.statesDir(st.ID) + recordName(st.Clock, st.Node)
}

// denyDir is the key prefix of id's deny records.
func (a *Archive) denyDir(id dtfc.ID) string { return a.prefix + "deny/" + shard(id) + "/" }

// DenyKey is the key of deny entry d's record (named like a state's).
func (a *Archive) DenyKey(d blobstore.Deny) string {
	return a.denyDir(d.ID) + recordName(d.Clock, d.Node)
}

// recordName names a record in its ID's directory: its clock (16 hex
// digits, so that names sort by clock) and the node that made it.
func recordName(clock dtfc.Timestamp, node string) string {
	return fmt.Sprintf("%016x-%s", uint64(clock), node)
}

func (a *Archive) logDir(writer string) string { return a.prefix + "log/" + writer + "/" }

// LogKey is the key of a writer's log entry seq.
func (a *Archive) LogKey(writer string, seq uint64) string {
	return a.logDir(writer) + fmt.Sprintf("%016x", seq)
}

// checksum is S3's SHA-512 checksum header of id: the base64 of its 64
// bytes, so the server refuses bytes that do not hash to it.
func checksum(id dtfc.ID) *string { return aws.String(base64.StdEncoding.EncodeToString(id[:])) }

// PutBlob writes blob id, the size bytes of f, once: an object that is
// already there is the same blob (its key is its hash), and that is
// success. Above the part size it is uploaded in parts, each a section
// of f (so a retry re-reads it; nothing is held in memory).
func (a *Archive) PutBlob(ctx context.Context, id dtfc.ID, f io.ReaderAt, size int64) error {
	key := a.BlobKey(id)
	if size > a.partSize {
		return a.putParts(ctx, id, key, f, size)
	}
	err := a.writeOnce(ctx, "put", key, func(ifNoneMatch *string) error {
		_, err := a.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: aws.String(a.bucket), Key: aws.String(key),
			Body: io.NewSectionReader(f, 0, size), ContentLength: aws.Int64(size),
			IfNoneMatch: ifNoneMatch, ChecksumSHA512: checksum(id),
			ContentType: aws.String("application/octet-stream"),
		})
		if err == nil {
			a.counters.written.Add(size)
		}
		return err
	})
	if errors.Is(err, ErrExists) {
		return nil
	}
	return err
}

// writeOnce writes key's object with put, which sends If-None-Match as
// it is given: "*" first, so an object already there is kept and the
// write answers ErrExists. That answer is checked (a HEAD): a server can
// refuse the write for an object it neither lists nor serves (versitygw
// with its metadata in sidecar files keeps an object's metadata when it
// dies, or fails, before the object's file is in place, and every
// conditional write of that key is refused from then on). Such a key is
// written again without the condition, which is safe for the objects
// written this way: each key has only one possible body (a blob is named
// by its hash, a record by its operation). A log entry is not written
// this way (AppendLog): a number taken is skipped.
func (a *Archive) writeOnce(ctx context.Context, op, key string, put func(ifNoneMatch *string) error) error {
	err := a.wrap(op, key, put(aws.String("*")))
	if !errors.Is(err, ErrExists) {
		return err
	}
	_, herr := a.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key)})
	herr = a.wrap("head", key, herr)
	if !errors.Is(herr, ErrNotFound) {
		if herr != nil {
			return herr
		}
		return err // there: written before
	}
	return a.wrap(op+" (again: the server refused it for an object it does not have)", key, put(nil))
}

// putParts uploads a large blob in parts. Each part carries its own
// SHA-512 (hashed from the file before it is sent); the whole blob's
// hash is the ID, verified on every read.
func (a *Archive) putParts(ctx context.Context, id dtfc.ID, key string, f io.ReaderAt, size int64) (err error) {
	if _, herr := a.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key)}); herr == nil {
		return nil // already there: the same blob
	}
	up, err := a.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
		Bucket: aws.String(a.bucket), Key: aws.String(key),
		ChecksumAlgorithm: types.ChecksumAlgorithmSha512,
		ContentType:       aws.String("application/octet-stream"),
	})
	if err != nil {
		return a.wrap("create multipart upload", key, err)
	}
	defer func() {
		if err != nil {
			// A detached context: the upload is abandoned also when
			// ctx ended.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			a.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: aws.String(a.bucket), Key: aws.String(key), UploadId: up.UploadId})
		}
	}()
	var parts []types.CompletedPart
	for n, off := int32(1), int64(0); off < size; n, off = n+1, off+a.partSize {
		length := min(a.partSize, size-off)
		h := sha512.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, off, length)); err != nil {
			return fmt.Errorf("archive: reading part %d of %s: %w", n, id, err)
		}
		sum := aws.String(base64.StdEncoding.EncodeToString(h.Sum(nil)))
		out, err := a.client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: aws.String(a.bucket), Key: aws.String(key), UploadId: up.UploadId,
			PartNumber: aws.Int32(n), Body: io.NewSectionReader(f, off, length), ContentLength: aws.Int64(length),
			ChecksumSHA512: sum,
		})
		if err != nil {
			return a.wrap(fmt.Sprintf("upload part %d of", n), key, err)
		}
		a.counters.written.Add(length)
		parts = append(parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(n), ChecksumSHA512: sum})
	}
	err = a.writeOnce(ctx, "complete multipart upload", key, func(ifNoneMatch *string) error {
		_, err := a.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket: aws.String(a.bucket), Key: aws.String(key), UploadId: up.UploadId,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
			IfNoneMatch:     ifNoneMatch,
		})
		return err
	})
	if errors.Is(err, ErrExists) {
		return nil
	}
	return err
}

// HasBlob reports whether blob id's object is in the bucket.
func (a *Archive) HasBlob(ctx context.Context, id dtfc.ID) (bool, error) {
	_, has, err := a.HeadBlob(ctx, id)
	return has, err
}

// BlobHead is what the bucket says of a blob's object without its bytes.
type BlobHead struct {
	Size int64
	// Sum says what the SHA-512 checksum the server keeps for the object
	// tells of its bytes.
	Sum SumWord
}

// SumWord is what an object's SHA-512 checksum (as HEAD answers it with
// checksum mode on) tells of its bytes.
type SumWord int

const (
	// SumNone: the server keeps no SHA-512 checksum of it (written
	// without one, or by hand into the server's storage), or one of its
	// parts only (a multipart upload's composite checksum): it vouches
	// for nothing.
	SumNone SumWord = iota
	// SumID: the checksum is the blob's ID, which the server checked the
	// bytes against on their way in (every single-part write of dtfc).
	SumID
	// SumOther: the checksum is another hash: other bytes.
	SumOther
)

// HeadBlob returns the size of blob id's object and what its checksum
// says, and whether there is one.
func (a *Archive) HeadBlob(ctx context.Context, id dtfc.ID) (BlobHead, bool, error) {
	key := a.BlobKey(id)
	out, err := a.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key),
		ChecksumMode: types.ChecksumModeEnabled})
	err = a.wrap("head", key, err)
	if errors.Is(err, ErrNotFound) {
		return BlobHead{}, false, nil
	}
	if err != nil {
		return BlobHead{}, false, err
	}
	h := BlobHead{Size: aws.ToInt64(out.ContentLength)}
	switch sum := aws.ToString(out.ChecksumSHA512); {
	case sum == "" || strings.Contains(sum, "-") || out.ChecksumType == types.ChecksumTypeComposite:
	case sum == *checksum(id):
		h.Sum = SumID
	default:
		h.Sum = SumOther
	}
	return h, true, nil
}

// OpenBlob opens blob id's object from byte off on, and returns its
// whole size. The bytes are the bucket's: the caller verifies them.
func (a *Archive) OpenBlob(ctx context.Context, id dtfc.ID, off int64) (io.ReadCloser, int64, error) {
	key := a.BlobKey(id)
	in := &s3.GetObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key)}
	if off > 0 {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", off))
	}
	out, err := a.client.GetObject(ctx, in)
	if err != nil {
		code, status := errorCode(err)
		if code == "InvalidRange" || status == http.StatusRequestedRangeNotSatisfiable {
			return nil, 0, fmt.Errorf("archive: get %s from %d: %w", key, off, ErrNotFound)
		}
		return nil, 0, a.wrap("get", key, err)
	}
	size := off + aws.ToInt64(out.ContentLength)
	if cr := aws.ToString(out.ContentRange); cr != "" {
		if i := strings.LastIndexByte(cr, '/'); i >= 0 {
			if n, perr := strconv.ParseInt(cr[i+1:], 10, 64); perr == nil {
				size = n
			}
		}
	}
	return &countingBody{ReadCloser: out.Body, n: &a.counters.read}, size, nil
}

// countingBody counts the bytes read through it.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// PutState writes st's record once. ErrExists: the record was already
// there (the same operation, written before).
func (a *Archive) PutState(ctx context.Context, st dtfc.State) error {
	return a.putRecord(ctx, "put state", a.StateKey(st), st)
}

// putRecord writes v as JSON under key, once (writeOnce): a record's key
// names its operation, whose record is always the same.
func (a *Archive) putRecord(ctx context.Context, op, key string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return a.writeOnce(ctx, op, key, func(ifNoneMatch *string) error { return a.putJSON(ctx, key, body, ifNoneMatch) })
}

// putJSON writes body (JSON) under key, with If-None-Match if given.
func (a *Archive) putJSON(ctx context.Context, key string, body []byte, ifNoneMatch *string) error {
	_, err := a.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(a.bucket), Key: aws.String(key),
		Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))),
		IfNoneMatch: ifNoneMatch, ContentType: aws.String("application/json"),
	})
	return err
}

// NewestState returns the winning state of id among its records in the
// bucket (the greatest clock, ties by node identity: dtfc.State.Newer).
// ErrNotFound if id has none.
func (a *Archive) NewestState(ctx context.Context, id dtfc.ID) (dtfc.State, error) {
	var st dtfc.State
	clock, node, key, err := a.newest(ctx, a.statesDir(id), "states", id, &st)
	if err != nil {
		return dtfc.State{}, err
	}
	// The key decides: a record's body that disagrees with its name is
	// not trusted.
	if st.ID != id || st.Clock != clock || st.Node != node {
		return dtfc.State{}, fmt.Errorf("%w: state record %s does not match its key", ErrBadRecord, key)
	}
	return st, nil
}

// PutDeny writes deny entry d's record once (a block or a lift).
// ErrExists: the record was already there (the same entry, written
// before).
func (a *Archive) PutDeny(ctx context.Context, d blobstore.Deny) error {
	return a.putRecord(ctx, "put deny entry", a.DenyKey(d), d)
}

// NewestDeny returns the winning deny entry of id among its records in
// the bucket (ordered like states: blobstore.Deny.Newer). ErrNotFound if
// id has none.
func (a *Archive) NewestDeny(ctx context.Context, id dtfc.ID) (blobstore.Deny, error) {
	var d blobstore.Deny
	clock, node, key, err := a.newest(ctx, a.denyDir(id), "deny entries", id, &d)
	if err != nil {
		return blobstore.Deny{}, err
	}
	if d.ID != id || d.Clock != clock || d.Node != node {
		return blobstore.Deny{}, fmt.Errorf("%w: deny record %s does not match its key", ErrBadRecord, key)
	}
	return d, nil
}

// newest lists the records under dir (what of id), and decodes the
// newest into v: the greatest clock, ties by node identity. It returns
// the clock and node its name gives, and its key. ErrNotFound if there
// is none.
func (a *Archive) newest(ctx context.Context, dir, what string, id dtfc.ID, v any) (dtfc.Timestamp, string, string, error) {
	type rec struct {
		clock dtfc.Timestamp
		node  string
		key   string
	}
	var best *rec
	p := s3.NewListObjectsV2Paginator(a.client, &s3.ListObjectsV2Input{Bucket: aws.String(a.bucket), Prefix: aws.String(dir)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return 0, "", "", a.wrap("list", dir, err)
		}
		for _, o := range page.Contents {
			name := strings.TrimPrefix(aws.ToString(o.Key), dir)
			hexClock, node, ok := strings.Cut(name, "-")
			if !ok || len(hexClock) != 16 || strings.Contains(node, "/") {
				continue // not a record of this layout
			}
			c, err := strconv.ParseUint(hexClock, 16, 64)
			if err != nil {
				continue
			}
			r := rec{dtfc.Timestamp(c), node, aws.ToString(o.Key)}
			if best == nil || r.clock > best.clock || r.clock == best.clock && r.node > best.node {
				best = &r
			}
		}
	}
	if best == nil {
		return 0, "", "", fmt.Errorf("archive: %s of %s: %w", what, id, ErrNotFound)
	}
	body, err := a.get(ctx, best.key, 1<<20)
	if err != nil {
		return 0, "", "", err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return 0, "", "", fmt.Errorf("%w: %s: %v", ErrBadRecord, best.key, err)
	}
	return best.clock, best.node, best.key, nil
}

// get reads a small object whole (at most limit bytes).
func (a *Archive) get(ctx context.Context, key string, limit int64) ([]byte, error) {
	out, err := a.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key)})
	if err != nil {
		return nil, a.wrap("get", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, limit+1))
	if err != nil {
		return nil, a.wrap("read", key, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("archive: %s is larger than %d bytes", key, limit)
	}
	return b, nil
}

// maxLogObject bounds the log object a reader takes into memory: a
// writer names at most one push round in one (256 changes, some 64 KB
// of JSON), so 4 MiB leaves room for rounds many times larger.
const maxLogObject = 4 << 20

// LogEntry is one change named in a writer's log: which ID, and the
// operation's clock and node (the records say the rest): a state's, or
// with Deny a deny entry's.
type LogEntry struct {
	ID      dtfc.ID        `json:"sha512"`
	Clock   dtfc.Timestamp `json:"clock"`
	Node    string         `json:"node"`
	Deleted bool           `json:"deleted,omitempty"`
	// Deny: the change is a deny entry (a block, or a lift), whose
	// records are under deny/ rather than states/.
	Deny bool `json:"deny,omitempty"`
}

// AppendLog writes a writer's log entry seq once. ErrExists: seq was
// taken (by an earlier attempt whose answer was lost, or by a server's
// leftover of one: see writeOnce), and the writer takes the next: a
// reader lists the log, so a number missing is no gap it waits at.
func (a *Archive) AppendLog(ctx context.Context, writer string, seq uint64, entries []LogEntry) error {
	body, err := json.Marshal(entries)
	if err != nil {
		return err
	}
	key := a.LogKey(writer, seq)
	return a.wrap("put log", key, a.putJSON(ctx, key, body, aws.String("*")))
}

// Writers lists the identities of the nodes that have a log in the
// bucket.
func (a *Archive) Writers(ctx context.Context) ([]string, error) {
	dir := a.prefix + "log/"
	var out []string
	p := s3.NewListObjectsV2Paginator(a.client, &s3.ListObjectsV2Input{Bucket: aws.String(a.bucket), Prefix: aws.String(dir), Delimiter: aws.String("/")})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, a.wrap("list", dir, err)
		}
		for _, cp := range page.CommonPrefixes {
			w := strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), dir), "/")
			if w != "" {
				out = append(out, w)
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// ReadLog calls fn with each of writer's log entries numbered after
// after (numbers start at 1: 0 reads them all), in order, with its
// number; it stops at fn's first error and returns it. At most limit
// entries are read (0: no limit).
func (a *Archive) ReadLog(ctx context.Context, writer string, after uint64, limit int, fn func(seq uint64, entries []LogEntry) error) error {
	dir := a.logDir(writer)
	in := &s3.ListObjectsV2Input{Bucket: aws.String(a.bucket), Prefix: aws.String(dir)}
	if after > 0 {
		in.StartAfter = aws.String(a.LogKey(writer, after))
	}
	n := 0
	p := s3.NewListObjectsV2Paginator(a.client, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return a.wrap("list", dir, err)
		}
		for _, o := range page.Contents {
			key := aws.ToString(o.Key)
			seq, err := strconv.ParseUint(strings.TrimPrefix(key, dir), 16, 64)
			if err != nil || seq <= after {
				continue
			}
			body, err := a.get(ctx, key, maxLogObject)
			if err != nil {
				return err
			}
			var entries []LogEntry
			if err := json.Unmarshal(body, &entries); err != nil {
				return fmt.Errorf("archive: log entry %s: %w", key, err)
			}
			if err := fn(seq, entries); err != nil {
				return err
			}
			if n++; limit > 0 && n >= limit {
				return nil
			}
		}
	}
	return nil
}
