"""Tests of dtfc.Client against real dtfc nodes."""

import hashlib
import io
import json
import os
import threading
import time
import tracemalloc

import pytest

import dtfc
from conftest import answer, closed_url


def sha(b):
    return hashlib.sha512(b).hexdigest()


def no_temp_files(d):
    return [n for n in os.listdir(d) if "dtfc-tmp" in n]


def test_round_trip(cluster, tmp_path):
    a, b = cluster
    c = dtfc.Client([a.url, b.url])
    data = b"hello dtfc\n" * 1000
    src = tmp_path / "hello.txt"
    src.write_bytes(data)
    want = sha(data)

    res = c.put(str(src))
    assert res["sha512"] == want
    assert res["size"] == len(data)
    assert res["filename"] == "hello.txt"
    assert res["location"] == a.url + "/" + want
    assert res["created"] is True
    again = c.put(src)  # a PathLike; the same bytes: the same ID, not created
    assert again["sha512"] == want and again["created"] is False

    st = c.stat(want.upper())  # an upper-case ID is the same ID
    assert st["sha512"] == want and st["size"] == len(data)
    assert st["content_type"].startswith("text/plain")
    assert st["node"] == a.url

    with c.open(want) as f:
        assert f.size == len(data) and f.id == want
        assert f.read(5) == b"hello"
        assert f.read() == data[5:]
        assert f.read() == b""
    with c.open(want) as f:
        lines = list(f)
    assert b"".join(lines) == data and len(lines) == 1000

    dst = tmp_path / "out" / "copy.txt"
    dst.parent.mkdir()
    got = c.get(want, dst)
    assert got == {"sha512": want, "size": len(data), "path": str(dst)}
    assert dst.read_bytes() == data
    assert no_temp_files(dst.parent) == []

    # The other node serves it too (replicated, or pulled from its peer).
    with dtfc.Client(b.url).open(want) as f:
        assert f.read() == data

    assert c.status()["node"] == a.url

    assert c.delete(want) == {"sha512": want, "deleted": True}
    assert c.stat(want) is None
    with pytest.raises(dtfc.NotFound) as e:
        c.open(want)
    assert e.value.status == 404 and isinstance(e.value, dtfc.HTTPError)


def test_put_file_objects(node, tmp_path):
    c = dtfc.Client(node.url)
    data = os.urandom(100_000)

    # A seekable file object is sent from where it stands.
    f = io.BytesIO(data)
    f.seek(1000)
    assert c.put(f)["sha512"] == sha(data[1000:])
    assert not f.closed  # put does not close what it did not open

    # The content as bytes; a file opened by the caller names the upload.
    assert c.put(data, filename="x.bin")["sha512"] == sha(data)
    p = tmp_path / "named.dat"
    p.write_bytes(data[:10])
    with open(p, "rb") as fh:
        assert c.put(fh)["filename"] == "named.dat"

    # A stream of unknown size is sent chunked.
    r, w = os.pipe()
    t = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    t.start()
    with os.fdopen(r, "rb") as pipe:
        res = c.put(pipe, filename="piped.bin")
    t.join()
    assert res["sha512"] == sha(data) and res["size"] == len(data)

    # An empty file.
    assert c.put(b"")["sha512"] == sha(b"")
    with c.open(sha(b"")) as f:
        assert f.read() == b""

    # The caller's file failing is not a node failing: no other node is tried.
    class Failing(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            raise OSError(5, "Input/output error")

    with pytest.raises(dtfc.Error, match="reading the upload file") as e:
        dtfc.Client([node.url, closed_url()]).put(Failing())
    assert not isinstance(e.value, dtfc.Unavailable)

    with pytest.raises(TypeError, match="binary mode"):
        with open(p, "r") as text:
            c.put(text)


def test_big_file_streamed(cluster, tmp_path):
    """A 20 MiB file goes up and down without being held in memory."""
    a, b = cluster
    size = 20 << 20
    src = tmp_path / "big.bin"
    h = hashlib.sha512()
    with open(src, "wb") as f:
        for _ in range(size // (1 << 20)):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            f.write(chunk)
    want = h.hexdigest()

    tracemalloc.start()
    try:
        res = dtfc.Client([a.url, b.url]).put(src, replicas=2)
        _, peak_put = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert res["sha512"] == want and res["size"] == size

        cb = dtfc.Client(b.url)
        st = cb.stat(want)
        assert st["size"] == size and st["source"] == "local"  # replicas=2: b held it on the answer

        dst = tmp_path / "big.copy"
        cb.get(want, dst)
        _, peak_get = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()

        h2, n = hashlib.sha512(), 0
        with cb.open(want) as f:
            for chunk in f.chunks():
                h2.update(chunk)
                n += len(chunk)
        _, peak_open = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == size and h2.hexdigest() == want
    assert os.path.getsize(dst) == size
    h3 = hashlib.sha512()
    with open(dst, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h3.update(chunk)
    assert h3.hexdigest() == want
    limit = 4 << 20
    assert peak_put < limit, "put held %d bytes at once" % peak_put
    assert peak_get < limit, "get held %d bytes at once" % peak_get
    assert peak_open < limit, "open/read held %d bytes at once" % peak_open


def test_expected_id(node):
    c = dtfc.Client(node.url)
    data = b"expected bytes"
    assert c.put(data, expected_id=sha(data).upper())["sha512"] == sha(data)

    other = b"other bytes"
    with pytest.raises(dtfc.DigestMismatch, match="nothing was stored"):
        c.put(other, expected_id=sha(b"something else"))
    assert c.stat(sha(other)) is None

    with pytest.raises(ValueError, match="not a blob ID"):
        c.put(data, expected_id="abc")
    with pytest.raises(ValueError, match="not a blob ID"):
        c.open("../etc/passwd")


def corrupt_handler(good, wrong, chunked=False, claimed=None):
    """corrupt_handler serves wrong for GET /sha512(good): a node or proxy
    that corrupts the bytes. claimed, if set, is the Content-Length sent."""
    want = sha(good)

    def handle(req):
        if req.path.strip("/") != want:
            return answer(req, 404, b'{"error": "not here"}')
        req.send_response(200)
        req.send_header("X-Content-SHA512", want)
        req.send_header("Connection", "close")
        req.close_connection = True
        if chunked:
            req.send_header("Transfer-Encoding", "chunked")
            req.end_headers()
            for i in range(0, len(wrong), 1000):
                part = wrong[i : i + 1000]
                req.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            req.wfile.write(b"0\r\n\r\n")
        else:
            req.send_header("Content-Length", str(claimed if claimed is not None else len(wrong)))
            req.end_headers()
            req.wfile.write(wrong)

    return handle


def read_pieces(f, n):
    """read_pieces reads f n bytes at a time; returns (pieces, error)."""
    pieces = []
    try:
        while True:
            b = f.read(n)
            if not b:
                return pieces, None
            pieces.append(b)
    except dtfc.Error as e:
        return pieces, e


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_digest_mismatch(stub, tmp_path, chunked):
    good = os.urandom(10_000)
    wrong = good[:-1] + bytes([good[-1] ^ 1])  # the last byte differs
    want = sha(good)

    # The stub serving the right bytes passes: what fails below is the check.
    ok = stub(corrupt_handler(good, good, chunked))
    with dtfc.Client(ok.url).open(want) as f:
        assert f.read() == good

    bad = stub(corrupt_handler(good, wrong, chunked))
    c = dtfc.Client(bad.url)
    with c.open(want) as f:
        pieces, err = read_pieces(f, 1000)
        assert isinstance(err, dtfc.DigestMismatch), err
        # The read that reached the end raised: the last bytes were not
        # returned, and the stream does not end cleanly afterwards either.
        assert len(b"".join(pieces)) < len(wrong)
        with pytest.raises(dtfc.DigestMismatch):
            f.read(1)
    with c.open(want) as f:
        with pytest.raises(dtfc.DigestMismatch, match="not to their ID"):
            f.read()

    # get leaves nothing behind and does not touch an existing file.
    dst = tmp_path / "dst.bin"
    dst.write_bytes(b"previous")
    with pytest.raises(dtfc.DigestMismatch):
        c.get(want, dst)
    assert dst.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["dst.bin"]


def test_upload_answer_checked(stub):
    """The ID a node answers must be the hash of the bytes sent: a proxy
    that corrupts an upload is caught."""

    def store(lie):
        def handle(req):
            body = req.rfile.read(int(req.headers["Content-Length"]))
            stored = body[:-1] + b"!" if lie else body
            doc = {"sha512": sha(stored), "size": len(stored), "filename": ""}
            answer(req, 201, json.dumps(doc).encode(), {"Location": "http://x/" + sha(stored)})

        return handle

    data = b"sent as it is"
    honest = stub(store(False))
    assert dtfc.Client(honest.url).put(data)["sha512"] == sha(data)
    # A server that ignores X-Content-SHA512 does not get the wrong bytes past.
    with pytest.raises(dtfc.DigestMismatch, match="not the expected"):
        dtfc.Client(honest.url).put(data, expected_id=sha(b"what the caller meant"))
    liar = stub(store(True))
    with pytest.raises(dtfc.DigestMismatch, match="bytes sent hash to " + sha(data)):
        dtfc.Client(liar.url).put(data)


def test_truncated_transfer(stub, tmp_path):
    good = os.urandom(5000)
    s = stub(corrupt_handler(good, good[:3000], claimed=len(good)))
    c = dtfc.Client(s.url)
    with c.open(sha(good)) as f:
        with pytest.raises(dtfc.TransferError, match="3000 of 5000"):
            f.read()
    with pytest.raises(dtfc.TransferError):
        c.get(sha(good), tmp_path / "x")
    assert os.listdir(tmp_path) == []


def test_failover_unreachable(node, tmp_path):
    """The first URL is a closed port: every call moves on to the node."""
    c = dtfc.Client([closed_url(), node.url])
    data = os.urandom(50_000)
    want = sha(data)
    assert c.put(data)["sha512"] == want
    assert c.stat(want)["node"] == node.url
    with c.open(want) as f:
        assert f.read() == data
    c.get(want, tmp_path / "x")
    assert c.status()["node"] == node.url

    # A stream that cannot be re-read still fails over when the failed node
    # read none of it.
    r, w = os.pipe()
    os.write(w, b"piped once")
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        assert c.put(pipe)["sha512"] == sha(b"piped once")
    assert c.delete(want)["deleted"] is True


def test_failover_5xx(node, stub):
    failing = stub(lambda req: answer(req, 503, b'{"error": "stub is down"}', {"Content-Type": "application/json"}))
    c = dtfc.Client([failing.url, node.url])
    data = b"five hundred"
    assert c.put(data)["sha512"] == sha(data)
    with c.open(sha(data)) as f:
        assert f.read() == data
    assert c.delete(sha(data))["deleted"]
    assert [m for m, _ in failing.requests] == ["POST", "GET", "DELETE"]

    # Every node failing: Unavailable, naming each.
    only = dtfc.Client([failing.url, closed_url()])
    with pytest.raises(dtfc.Unavailable) as e:
        only.status()
    assert len(e.value.errors) == 2
    assert isinstance(e.value.errors[0][1], dtfc.HTTPError) and e.value.errors[0][1].status == 503
    assert "stub is down" in str(e.value)


def test_failover_after_partial_body(node, stub):
    """A node that fails mid-body: a seekable file is sent again from its
    start to the next node; a pipe cannot be, and says so."""

    def read_some_then_fail(req):
        req.rfile.read(64 << 10)  # the stub answered 100 Continue itself
        answer(req, 500, b'{"error": "disk on fire"}')

    failing = stub(read_some_then_fail)
    c = dtfc.Client([failing.url, node.url])
    data = os.urandom(2 << 20)
    f = io.BytesIO(data)
    assert c.put(f)["sha512"] == sha(data)

    r, w = os.pipe()
    t = threading.Thread(target=lambda: (_write_all(w, data), os.close(w)))
    t.start()
    try:
        with os.fdopen(r, "rb") as pipe:
            with pytest.raises(dtfc.Error, match="cannot be read again"):
                c.put(pipe)
    finally:
        t.join()
    assert len(failing.requests) == 2


def _write_all(fd, data):
    try:
        os.write(fd, data)
    except BrokenPipeError:
        pass


def test_4xx_not_retried(node, stub):
    refusing = stub(lambda req: answer(req, 403, b'{"error": "forbidden by the stub"}'))
    c = dtfc.Client([refusing.url, node.url])
    data = b"never stored"
    with pytest.raises(dtfc.HTTPError) as e:
        c.put(data)
    assert e.value.status == 403 and e.value.message == "forbidden by the stub"
    assert not isinstance(e.value, dtfc.NotFound)
    assert dtfc.Client(node.url).stat(sha(data)) is None  # the next node got nothing

    missing = stub(lambda req: answer(req, 404, b'{"error": "no such blob"}'))
    held = dtfc.Client(node.url).put(b"held by the node")["sha512"]
    with pytest.raises(dtfc.NotFound, match="no such blob"):
        dtfc.Client([missing.url, node.url]).open(held)
    assert len(refusing.requests) == 1 and len(missing.requests) == 1


def test_timeout_fails_over(node, stub):
    release = threading.Event()

    def hang(req):
        release.wait(30)

    slow = stub(hang)
    try:
        c = dtfc.Client([slow.url, node.url], timeout=1)
        start = time.monotonic()
        assert c.status()["node"] == node.url
        assert time.monotonic() - start < 10
    finally:
        release.set()


class CountingReader(io.RawIOBase):
    """CountingReader counts the bytes read from a seekable file."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, off, whence=io.SEEK_SET):
        return self.f.seek(off, whence)

    def tell(self):
        return self.f.tell()

    def read(self, n=-1):
        b = self.f.read(n)
        self.n += len(b)
        return b


def test_token(start_node, tmp_path):
    n = start_node("auth", args=["--auth-token", "s3cret"])
    data = b"needs a token"
    anon = dtfc.Client(n.url)
    with pytest.raises(dtfc.HTTPError) as e:
        anon.put(data)
    assert e.value.status == 401 and "Bearer" in e.value.message

    # A body larger than the node reads and discards before an error answer
    # (16 MiB) is refused before a byte of it is sent (Expect:
    # 100-continue), with the node's message rather than a reset connection.
    big = tmp_path / "sparse"
    with open(big, "wb") as f:
        f.truncate(20 << 20)
    with open(big, "rb") as f:
        counted = CountingReader(f)
        with pytest.raises(dtfc.HTTPError) as e:
            anon.put(counted)
    assert e.value.status == 401 and "Bearer" in e.value.message
    assert counted.n == 0

    with pytest.raises(dtfc.HTTPError) as e:
        dtfc.Client(n.url, token="wrong").put(data)
    assert e.value.status == 401

    c = dtfc.Client(n.url, token="s3cret")
    want = c.put(data)["sha512"]
    with anon.open(want) as f:  # reads need no token here
        assert f.read() == data
    with pytest.raises(dtfc.HTTPError) as e:
        anon.delete(want)
    assert e.value.status == 401
    assert c.delete(want)["deleted"] is True


def test_bad_arguments():
    with pytest.raises(ValueError):
        dtfc.Client([])
    with pytest.raises(ValueError, match="http"):
        dtfc.Client("ftp://example.com")
    c = dtfc.Client("http://127.0.0.1:1/prefix/")
    assert c.urls == ["http://127.0.0.1:1/prefix"]
    with pytest.raises(ValueError, match="replicas"):
        c.put(b"x", replicas=0)
    with pytest.raises(TypeError):
        c.put(12)
    assert dtfc.is_id("A" * 128) and not dtfc.is_id("a" * 127) and not dtfc.is_id(None)
