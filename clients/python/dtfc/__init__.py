"""A client for dtfc, a content-addressed (SHA-512) replicating file server.

Standard library only. A blob's ID is the lowercase hex SHA-512 of its
bytes (128 characters)::

    import dtfc

    c = dtfc.Client(["http://10.0.0.1:8080", "http://10.0.0.2:8080"], token=token)
    res = c.put("photo.jpg")                 # streamed; res["sha512"] is the ID
    with c.open(res["sha512"]) as f:         # verified as it streams
        data = f.read()                      # DigestMismatch at the end if corrupt
    c.get(res["sha512"], "copy.jpg")         # temp file, verified, then renamed
    c.stat(res["sha512"])                    # {"size": ..., ...} or None
    c.delete(res["sha512"])                  # everywhere

Every call tries the node URLs in order: a node that cannot be reached,
times out or answers 5xx is replaced by the next one; a 4xx is raised at
once (every node would say the same). An upload moves on to the next node
only if its body can be sent again (a path, a seekable file, bytes, or a
stream of which nothing was read yet).
"""

import datetime
import email.utils
import hashlib
import http.client
import io
import json
import os
import re
import secrets
import select
import ssl
import urllib.parse

__all__ = [
    "Client",
    "BlobReader",
    "Error",
    "HTTPError",
    "NotFound",
    "DigestMismatch",
    "TransferError",
    "Unavailable",
    "is_id",
]

__version__ = "0.1.0"

_ID_RE = re.compile(r"\A[0-9a-fA-F]{128}\Z")

# _CHUNK is how much is read from a file, sent or received at once.
_CHUNK = 256 << 10

# _EXPECT_WAIT is how long (seconds) an upload waits for "100 Continue"
# before it sends the body anyway (curl waits 1 s too). Waiting lets a node
# refuse an upload (401, 413, a wrong replicas=N) before any byte is sent,
# with its JSON message, instead of cutting a connection mid-body.
_EXPECT_WAIT = 1.0


class Error(Exception):
    """Error is the base of every error this package raises."""


class HTTPError(Error):
    """HTTPError is an error answer from a node.

    status is the HTTP status code, message the node's JSON "error" text
    (or the body as text), url the request's URL.
    """

    def __init__(self, url, status, message):
        self.url = url
        self.status = status
        self.message = message
        reason = http.client.responses.get(status, "")
        super().__init__("dtfc: %s: %d %s: %s" % (url, status, reason, message))


class NotFound(HTTPError):
    """NotFound is a 404: no node holds the ID."""


class DigestMismatch(Error):
    """DigestMismatch means bytes do not hash to the ID they should have."""


class TransferError(Error):
    """TransferError means a transfer broke off: the connection closed or
    failed before the whole body was received."""


class Unavailable(Error):
    """Unavailable means every node URL failed with an error another node
    might not have had (unreachable, timed out, 5xx).

    errors lists (url, exception) for each node tried, in order.
    """

    def __init__(self, errors):
        self.errors = list(errors)
        parts = "; ".join("%s: %s" % (u, e) for u, e in self.errors)
        super().__init__("dtfc: no node could serve the request: %s" % parts)


def is_id(s):
    """is_id reports whether s is a blob ID: 128 hex digits (any case)."""
    return isinstance(s, str) and _ID_RE.match(s) is not None


def _check_id(blob_id):
    if not is_id(blob_id):
        raise ValueError("dtfc: %r is not a blob ID (128 hex digits of SHA-512)" % (blob_id,))
    return blob_id.lower()


# Failures after which another node may succeed: the node could not be
# reached, timed out, or spoke broken HTTP.
_NET_ERRORS = (OSError, http.client.HTTPException)


class _Node:
    """One node base URL, split for http.client."""

    def __init__(self, url):
        if not isinstance(url, str):
            raise TypeError("dtfc: node URL %r: want a string" % (url,))
        u = urllib.parse.urlsplit(url.strip())
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("dtfc: node URL %r: want http(s)://host[:port][/prefix]" % (url,))
        if u.query or u.fragment:
            raise ValueError("dtfc: node URL %r: no query or fragment allowed" % (url,))
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port
        self.prefix = u.path.rstrip("/")
        self.url = url.strip().rstrip("/")

    def connect(self, timeout, context):
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


def _answer_message(resp):
    """_answer_message reads an error answer's {"error": ...} text."""
    try:
        body = resp.read(64 << 10)
    except _NET_ERRORS:
        body = b""
    text = body.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"]
    return text


def _answer_error(url, resp):
    msg = _answer_message(resp)
    if resp.status == 404:
        return NotFound(url, resp.status, msg)
    return HTTPError(url, resp.status, msg)


class _Retry(Exception):
    """_Retry carries a failure after which the next node is tried."""

    def __init__(self, err):
        super().__init__(str(err))
        self.err = err


class Client:
    """Client talks to the nodes of a dtfc cluster.

    urls is a list of node base URLs ("http://10.0.0.1:8080"; a path prefix
    is kept, for a node behind a proxy), or one URL as a string; they are
    tried in order. token, if set, is sent as "Authorization: Bearer
    <token>" with every request (a write token also reads). timeout
    (seconds) bounds connecting and every single read or write on the
    socket, not a whole transfer; with put(replicas=N) make it longer than
    the nodes' replicas_timeout (30 s by default). ssl_context verifies
    https nodes (default: the system's trusted roots).
    """

    def __init__(self, urls, token=None, timeout=30, ssl_context=None):
        if isinstance(urls, str):
            urls = [urls]
        urls = list(urls)
        if not urls:
            raise ValueError("dtfc: no node URL given")
        self._nodes = [_Node(u) for u in urls]
        self.token = token
        self.timeout = timeout
        self._ssl = ssl_context

    @property
    def urls(self):
        """urls are the node base URLs, in the order they are tried."""
        return [n.url for n in self._nodes]

    def _headers(self, extra=None):
        h = {"User-Agent": "dtfc-python/" + __version__}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        if extra:
            h.update(extra)
        return h

    def _each(self, attempt):
        """_each calls attempt(node) for each node in turn until one returns.

        attempt raises _Retry to move on to the next node; anything else
        it raises ends the loop at once.
        """
        errors = []
        for node in self._nodes:
            try:
                return attempt(node)
            except _Retry as r:
                errors.append((node.url, r.err))
        raise Unavailable(errors) from errors[-1][1]

    def _request(self, node, method, path, headers=None):
        """_request sends a body-less request and returns (conn, resp).

        Network failures and 5xx raise _Retry; the caller owns conn on
        return and closes it.
        """
        url = node.url + path
        conn = node.connect(self.timeout, self._ssl)
        try:
            conn.request(method, node.prefix + path, headers=self._headers(headers))
            resp = conn.getresponse()
        except _NET_ERRORS as e:
            conn.close()
            raise _Retry(e)
        if resp.status >= 500:
            err = _answer_error(url, resp)
            conn.close()
            raise _Retry(err)
        return conn, resp

    def _json(self, method, path, ok=(200,), headers=None):
        """_json sends a body-less request and decodes its JSON answer."""

        def attempt(node):
            conn, resp = self._request(node, method, path, headers)
            try:
                if resp.status not in ok:
                    raise _answer_error(node.url + path, resp)
                try:
                    body = resp.read()
                except _NET_ERRORS as e:
                    raise _Retry(e)
                try:
                    return json.loads(body.decode("utf-8"))
                except ValueError as e:
                    raise Error("dtfc: %s%s: the answer is not JSON: %s" % (node.url, path, e))
            finally:
                conn.close()

        return self._each(attempt)

    # Uploads.

    def put(self, path_or_file, filename=None, replicas=None, expected_id=None, content_type=None):
        """put uploads a file and returns the node's answer as a dict.

        path_or_file is a path (str or os.PathLike), a binary file object,
        or the content itself as bytes. The body is streamed (with a
        Content-Length when the size is known, chunked otherwise) and hashed
        as it is sent; the ID the node answers must equal that hash, else
        DigestMismatch.

        filename is recorded as metadata (and chooses the Content-Type); it
        defaults to the path's base name. replicas=N answers only once N
        replicas hold the file. expected_id, if given, is sent as
        X-Content-SHA512: a node refuses bytes that do not hash to it and
        stores nothing (DigestMismatch), and the answer's ID must equal it.

        The dict has the node's "sha512", "size" and "filename", plus
        "location" (the Location header) and "created" (False if the node
        already held the file).
        """
        if expected_id is not None:
            expected_id = _check_id(expected_id)
        if replicas is not None:
            if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
                raise ValueError("dtfc: replicas=%r: want a whole number from 1" % (replicas,))
        body, owned = _open_body(path_or_file)
        try:
            if filename is None:
                filename = _default_filename(path_or_file)
            query = {}
            if filename:
                query["filename"] = filename
            if replicas is not None and replicas > 1:
                query["replicas"] = str(replicas)
            path = "/"
            if query:
                path += "?" + urllib.parse.urlencode(query)
            headers = {}
            if expected_id:
                headers["X-Content-SHA512"] = expected_id
            if content_type:
                headers["Content-Type"] = content_type

            failed = []

            def attempt(node):
                if body.sent_any and not body.rewind():
                    prev_url, prev = failed[-1]
                    raise Error(
                        "dtfc: upload: %s failed (%s) after part of the body was sent, and the body cannot "
                        "be read again to send it to %s (give a path or a seekable file to fail over)"
                        % (prev_url, prev, node.url)
                    ) from prev
                try:
                    return self._put_once(node, path, body, headers, expected_id)
                except _Retry as r:
                    failed.append((node.url, r.err))
                    raise

            return self._each(attempt)
        finally:
            if owned:
                body.close()

    def _put_once(self, node, path, body, headers, expected_id):
        url = node.url + path
        conn = node.connect(self.timeout, self._ssl)
        try:
            resp = self._send_upload(conn, node.prefix + path, body, headers)
            if resp.status == 504 and "replicas=" in path:
                # Stored and still replicating: sent to the next node, it
                # would only wait there again.
                raise _answer_error(url, resp)
            if resp.status >= 500:
                raise _Retry(_answer_error(url, resp))
            if resp.status not in (200, 201):
                err = _answer_error(url, resp)
                sent = body.digest()
                if resp.status == 400 and expected_id and sent is not None and sent != expected_id:
                    raise DigestMismatch(
                        "dtfc: the bytes sent hash to %s, not the expected %s; nothing was stored (%s)"
                        % (sent, expected_id, err.message)
                    ) from err
                raise err
            try:
                raw = resp.read()
            except _NET_ERRORS as e:
                raise _Retry(e)
            try:
                doc = json.loads(raw.decode("utf-8"))
                got = doc["sha512"]
            except (ValueError, KeyError, TypeError) as e:
                raise Error("dtfc: %s: the answer is not an upload answer: %s" % (url, e))
            sent = body.digest()
            if sent is None:
                raise Error("dtfc: %s: answered %d before the whole body was sent" % (url, resp.status))
            if got != sent:
                raise DigestMismatch("dtfc: %s stored %s, but the bytes sent hash to %s" % (url, got, sent))
            if expected_id and got != expected_id:
                raise DigestMismatch("dtfc: %s stored %s, not the expected %s" % (url, got, expected_id))
            doc["location"] = resp.getheader("Location")
            doc["created"] = resp.status == 201
            return doc
        finally:
            conn.close()

    def _send_upload(self, conn, path, body, headers):
        """_send_upload sends an upload request and returns the answer.

        It says "Expect: 100-continue" and waits a moment for the node's
        go-ahead, so a refusal arrives before the body is sent.
        """
        size = body.size
        h = self._headers(headers)
        if size is None:
            h["Transfer-Encoding"] = "chunked"
        else:
            h["Content-Length"] = str(size)
        if size != 0:
            h["Expect"] = "100-continue"
        try:
            conn.putrequest("POST", path, skip_accept_encoding=True)
            for k, v in h.items():
                conn.putheader(k, v)
            conn.endheaders()
            if size != 0:
                early = _await_continue(conn)
                if early is not None:
                    return early
            try:
                body.send(conn.sock, chunked=size is None)
            except OSError as e:
                # The node may have answered (and closed) mid-body: prefer
                # its answer to the broken pipe.
                try:
                    return conn.getresponse()
                except _NET_ERRORS:
                    raise e
            return conn.getresponse()
        except _NET_ERRORS as e:
            raise _Retry(e)

    # Downloads.

    def open(self, blob_id):
        """open returns a BlobReader streaming the blob.

        Reading verifies the bytes: the read that reaches the end raises
        DigestMismatch instead of returning the last bytes when they do not
        hash to the ID. Raises NotFound if no node holds it.
        """
        blob_id = _check_id(blob_id)
        path = "/" + blob_id

        def attempt(node):
            conn, resp = self._request(node, "GET", path)
            if resp.status != 200:
                try:
                    raise _answer_error(node.url + path, resp)
                finally:
                    conn.close()
            return BlobReader(_VerifyingStream(conn, resp, blob_id, node.url + path))

        return self._each(attempt)

    def get(self, blob_id, path):
        """get downloads the blob to the file path, verified.

        The bytes go to a temporary file in path's directory, which is
        fsync'd and renamed to path only once they hash to the ID; on any
        failure it is removed and path is left as it was. Returns
        {"sha512": ID, "size": bytes, "path": path}.
        """
        path = os.fspath(path)
        d = os.path.dirname(os.path.abspath(path))
        with self.open(blob_id) as src:
            tmp = None
            try:
                fd, tmp = _create_temp(d, os.path.basename(path))
                n = 0
                with os.fdopen(fd, "wb") as dst:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        dst.write(chunk)
                        n += len(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                os.replace(tmp, path)
                tmp = None
            finally:
                if tmp is not None:
                    try:
                        os.unlink(tmp)
                    except FileNotFoundError:
                        pass
        _fsync_dir(d)
        return {"sha512": src.id, "size": n, "path": path}

    def stat(self, blob_id):
        """stat returns what a node says of the blob (HEAD), or None if no
        node holds it.

        The dict has "sha512", "size", "content_type", "source" ("local" or
        "peer": whether the answering node held it) and "node" (the URL of
        the node that answered).
        """
        blob_id = _check_id(blob_id)
        path = "/" + blob_id

        def attempt(node):
            conn, resp = self._request(node, "HEAD", path)
            try:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise HTTPError(node.url + path, resp.status, resp.reason)
                length = resp.getheader("Content-Length")
                return {
                    "sha512": blob_id,
                    "size": int(length) if length is not None else None,
                    "content_type": resp.getheader("Content-Type"),
                    "source": resp.getheader("X-Dtfc-Source"),
                    "node": node.url,
                }
            finally:
                conn.close()

        return self._each(attempt)

    def delete(self, blob_id, unmodified_since=None):
        """delete deletes the blob on every node and returns the node's
        answer ({"sha512": ID, "deleted": True}). Raises NotFound if no
        node knows the ID.

        unmodified_since (a datetime, naive taken as UTC, or a Unix time)
        makes it conditional (If-Unmodified-Since): the node deletes only
        a blob it holds and has not had uploaded after that second, as a
        listing's "uploaded" says; otherwise HTTPError with status 412 and
        nothing deleted (NotFound if that node does not hold it)."""
        headers = None
        if unmodified_since is not None:
            if isinstance(unmodified_since, datetime.datetime):
                if unmodified_since.tzinfo is None:
                    unmodified_since = unmodified_since.replace(tzinfo=datetime.timezone.utc)
                unmodified_since = unmodified_since.timestamp()
            headers = {"If-Unmodified-Since": email.utils.formatdate(unmodified_since, usegmt=True)}
        return self._json("DELETE", "/" + _check_id(blob_id), headers=headers)

    def status(self):
        """status returns a node's /_status document (node, role, blobs,
        bytes, queues, ...)."""
        return self._json("GET", "/_status")


def _await_continue(conn):
    """_await_continue waits up to _EXPECT_WAIT for the node's answer to
    "Expect: 100-continue". It returns None when the body should be sent
    ("100 Continue", or no word in time), or the node's final answer when
    it refused before the body."""
    sock = conn.sock
    while True:
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not pending:
            ready, _, _ = select.select([sock], [], [], _EXPECT_WAIT)
            if not ready:
                return None
        head = _read_head(sock)
        status = head.split(b" ", 2)[1:2]
        if status == [b"100"]:
            return None
        if status[:1] and status[0].startswith(b"1"):
            continue  # another interim answer (103 Early Hints): wait on
        resp = http.client.HTTPResponse(_PrefixedSocket(head, sock), method="POST")
        resp.begin()
        return resp


def _read_head(sock):
    """_read_head reads one answer's status line and headers, byte by byte
    so that nothing after them is consumed."""
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        b = sock.recv(1)
        if not b:
            raise http.client.RemoteDisconnected("the node closed the connection before answering")
        head += b
        if len(head) > 64 << 10:
            raise http.client.HTTPException("answer head longer than 64 KiB")
        if head == b"\n" or head.endswith(b"\n\n"):
            break
    return bytes(head)


class _PrefixedSocket:
    """_PrefixedSocket gives http.client a socket whose first bytes were
    already read (the head read by _await_continue)."""

    def __init__(self, prefix, sock):
        self._prefix = prefix
        self._sock = sock

    def makefile(self, mode):
        return io.BufferedReader(_PrefixedRaw(self._prefix, self._sock))


class _PrefixedRaw(io.RawIOBase):
    def __init__(self, prefix, sock):
        self._prefix = memoryview(prefix)
        self._sock = sock

    def readable(self):
        return True

    def readinto(self, b):
        if len(self._prefix):
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._sock.recv_into(b)


class _Body:
    """_Body is an upload's content: a binary file object, its size (None
    if unknown: sent chunked) and the SHA-512 of what was sent."""

    def __init__(self, f):
        self._f = f
        self._start = None
        self.size = None
        seekable = False
        try:
            seekable = f.seekable()
        except (AttributeError, OSError, ValueError):
            seekable = False
        if seekable:
            try:
                self._start = f.tell()
                end = f.seek(0, io.SEEK_END)
                if end is None:  # a seek that does not return the position
                    end = f.tell()
                f.seek(self._start, io.SEEK_SET)
                self.size = end - self._start
            except (OSError, ValueError, AttributeError):
                self._start = None
                self.size = None
        self.sent_any = False
        self._hash = None
        self._whole = False

    def rewind(self):
        """rewind seeks back to where the upload started; False if the
        file cannot."""
        if self._start is None:
            return False
        self._f.seek(self._start, io.SEEK_SET)
        return True

    def digest(self):
        """digest is the hex SHA-512 of the whole body sent, or None if it
        was not sent to its end."""
        if self._hash is None or not self._whole:
            return None
        return self._hash.hexdigest()

    def send(self, sock, chunked):
        self._hash = hashlib.sha512()
        self._whole = False
        n = 0
        while True:
            try:
                chunk = self._f.read(_CHUNK)
            except OSError as e:
                # The caller's file failed, not the node: no other node
                # would do better.
                raise Error("dtfc: reading the upload file: %s" % e) from e
            if chunk is None:
                raise Error("dtfc: the upload file is in non-blocking mode and had no data")
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError("dtfc: the upload file gave %s, not bytes: open it in binary mode" % type(chunk).__name__)
            if not chunk:
                break
            self.sent_any = True
            self._hash.update(chunk)
            n += len(chunk)
            if self.size is not None and n > self.size:
                raise Error("dtfc: the upload file grew while it was sent (%d bytes, then more)" % self.size)
            if chunked:
                sock.sendall(b"%x\r\n" % len(chunk))
                sock.sendall(chunk)
                sock.sendall(b"\r\n")
            else:
                sock.sendall(chunk)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        elif n != self.size:
            raise Error("dtfc: the upload file shrank while it was sent (%d bytes, then %d)" % (self.size, n))
        self._whole = True

    def close(self):
        self._f.close()


def _open_body(src):
    """_open_body returns (_Body, owned): owned bodies are closed by put."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _Body(io.BytesIO(bytes(src))), True
    if isinstance(src, str) or isinstance(src, os.PathLike):
        return _Body(open(src, "rb")), True
    if hasattr(src, "read"):
        if isinstance(src, io.TextIOBase):
            raise TypeError("dtfc: the upload file is in text mode: open it in binary mode ('rb')")
        return _Body(src), False
    raise TypeError("dtfc: put takes a path, a binary file object or bytes, not %s" % type(src).__name__)


def _default_filename(src):
    name = None
    if isinstance(src, (str, os.PathLike)):
        name = os.fspath(src)
    elif hasattr(src, "read"):
        name = getattr(src, "name", None)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not isinstance(name, str) or not name or name.startswith("<"):
        return None
    return os.path.basename(name) or None


def _create_temp(d, base):
    """_create_temp creates a new file in d, readable as the umask allows
    (like any file the program writes), and returns (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(d, ".%s.%s.dtfc-tmp" % (base[:100], secrets.token_hex(6)))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError("dtfc: cannot create a temporary file in %s" % d)


def _fsync_dir(d):
    """_fsync_dir makes a rename in d durable (where the platform can)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _VerifyingStream(io.RawIOBase):
    """_VerifyingStream reads a download's body and hashes it.

    With a Content-Length, the read that brings the last byte checks the
    hash before it returns: wrong bytes end in DigestMismatch, never in the
    last chunk and a clean EOF. Without one (chunked), the last byte
    received is held back until the end of the body is seen and checked.
    """

    def __init__(self, conn, resp, blob_id, url):
        super().__init__()
        self._conn = conn
        self._resp = resp
        self.id = blob_id
        self.url = url
        length = resp.getheader("Content-Length")
        self.size = int(length) if length is not None and resp.getheader("Transfer-Encoding") is None else None
        self._hash = hashlib.sha512()
        self._count = 0
        self._held = b""
        self._err = None
        self._done = False
        self.mode = "rb"

    def readable(self):
        return True

    def readinto(self, b):
        if self._err is not None:
            raise self._err
        if self._done or len(b) == 0:
            return 0
        try:
            if self.size is not None:
                return self._read_sized(b)
            return self._read_chunked(b)
        except Error as e:
            self._fail(e)
            raise
        except _NET_ERRORS as e:
            err = TransferError("dtfc: %s: the transfer broke after %d bytes: %s" % (self.url, self._count, e))
            self._fail(err)
            raise err from e

    def _read_sized(self, b):
        remaining = self.size - self._count
        if remaining == 0:
            self._finish()
            return 0
        mv = memoryview(b).cast("B")[: min(len(b), remaining)]
        n = self._resp.readinto(mv)
        if not n:
            raise TransferError(
                "dtfc: %s: the connection closed after %d of %d bytes" % (self.url, self._count, self.size)
            )
        self._hash.update(mv[:n])
        self._count += n
        if self._count == self.size:
            self._finish()
        return n

    def _read_chunked(self, b):
        mv = memoryview(b).cast("B")
        while True:
            chunk = self._resp.read(len(mv))
            if not chunk:
                data, self._held = self._held, b""
                self._hash.update(data)
                self._count += len(data)
                self._finish()
                mv[: len(data)] = data
                return len(data)
            data = self._held + chunk
            out, self._held = data[:-1], data[-1:]
            if out:
                self._hash.update(out)
                self._count += len(out)
                mv[: len(out)] = out
                return len(out)

    def _finish(self):
        got = self._hash.hexdigest()
        self._done = True
        self._release()
        if got != self.id:
            raise DigestMismatch(
                "dtfc: %s: the %d bytes received hash to %s, not to their ID" % (self.url, self._count, got)
            )

    def _fail(self, err):
        self._err = err
        self._release()

    def _release(self):
        if self._conn is not None:
            self._resp.close()
            self._conn.close()
            self._conn = None

    def close(self):
        if not self.closed:
            self._release()
        super().close()


class BlobReader(io.BufferedReader):
    """BlobReader is an open blob: a binary, read-only, non-seekable file
    object (read(n), readline, iteration by lines, close, with).

    The bytes are verified as they stream: the read that reaches the end
    raises DigestMismatch if they do not hash to the ID (and does not
    return the last ones). A broken transfer raises TransferError.

    id is the blob's ID, size its length (from Content-Length, or None),
    url where it is read from, content_type and source ("local" or "peer")
    what the node said.
    """

    def __init__(self, raw):
        super().__init__(raw, _CHUNK)
        self.id = raw.id
        self.size = raw.size
        self.url = raw.url
        self.content_type = raw._resp.getheader("Content-Type")
        self.source = raw._resp.getheader("X-Dtfc-Source")

    def chunks(self, size=_CHUNK):
        """chunks yields the blob in pieces of at most size bytes."""
        while True:
            b = self.read1(size)
            if not b:
                return
            yield b
