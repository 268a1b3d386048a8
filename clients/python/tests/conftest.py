"""Fixtures: real dtfc nodes (the binary from $DTFC_BIN, else built once with
go build), and small local HTTP servers that stand in for a broken node or a
corrupting proxy."""

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(HERE)  # clients/python
REPO = os.path.dirname(os.path.dirname(PKG))
sys.path.insert(0, PKG)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def dtfc_bin(tmp_path_factory):
    path = os.environ.get("DTFC_BIN")
    if path:
        if not os.access(path, os.X_OK):
            pytest.fail("DTFC_BIN=%s is not an executable file" % path)
        return path
    go = shutil.which("go")
    if go is None:
        pytest.fail("set DTFC_BIN to a dtfc binary, or put go in PATH to build one")
    path = str(tmp_path_factory.mktemp("bin") / "dtfc")
    out = subprocess.run([go, "build", "-o", path, "./cmd/dtfc"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail("go build ./cmd/dtfc: %s" % (out.stdout + out.stderr))
    return path


class Node:
    """Node is a dtfc serve process on 127.0.0.1."""

    def __init__(self, bin_path, basedir, port=None, peerlist=None, args=()):
        self.port = port or free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.basedir = str(basedir)
        self.log_path = self.basedir + ".log"
        cmd = [
            bin_path, "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--basedir", self.basedir,
            "--me", self.url,
        ]
        if peerlist:
            cmd += ["--peerlist", str(peerlist)]
        cmd += list(args)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, deadline=20.0):
        end = time.monotonic() + deadline
        last = None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("dtfc on port %d exited with %d:\n%s" % (self.port, self.proc.returncode, self.log()))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.05)
        raise RuntimeError("dtfc on port %d not healthy after %.0fs (%s):\n%s" % (self.port, deadline, last, self.log()))

    def log(self):
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-4000:].decode("utf-8", "replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._log.close()


@pytest.fixture
def start_node(dtfc_bin, tmp_path):
    """start_node(name, args=..., peers=...) starts a node, stopped at teardown."""
    nodes = []

    def start(name="n", args=(), peerlist=None, port=None):
        n = Node(dtfc_bin, tmp_path / name, port=port, peerlist=peerlist, args=args)
        nodes.append(n)
        n.wait_healthy()
        return n

    yield start
    for n in nodes:
        n.stop()


@pytest.fixture
def node(start_node):
    """node is a single dtfc node."""
    return start_node("single")


@pytest.fixture(scope="module")
def cluster(dtfc_bin, tmp_path_factory):
    """cluster is two dtfc replicas that list each other."""
    d = tmp_path_factory.mktemp("cluster")
    ports = [free_port(), free_port()]
    peerlist = d / "peerlist.toml"
    peerlist.write_text("".join('[[peers]]\nurl = "http://127.0.0.1:%d"\n\n' % p for p in ports))
    nodes = []
    try:
        for i, p in enumerate(ports):
            nodes.append(Node(dtfc_bin, d / ("node%d" % i), port=p, peerlist=peerlist))
        for n in nodes:
            n.wait_healthy()
        yield nodes
    finally:
        for n in nodes:
            n.stop()


class StubServer:
    """StubServer is an HTTP server in a thread answering with handler(req),
    where req is the BaseHTTPRequestHandler; it records the requests."""

    def __init__(self, handler):
        stub = self
        self.requests = []

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                stub.requests.append((self.command, self.path))
                handler(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@pytest.fixture
def stub():
    """stub(handler) starts a StubServer, closed at teardown."""
    servers = []

    def start(handler):
        s = StubServer(handler)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def answer(req, status, body=b"", headers=None, close=True):
    """answer writes a whole answer to a stub request."""
    req.send_response(status)
    for k, v in (headers or {}).items():
        req.send_header(k, v)
    req.send_header("Content-Length", str(len(body)))
    if close:
        req.send_header("Connection", "close")
        req.close_connection = True
    req.end_headers()
    if req.command != "HEAD":
        req.wfile.write(body)


def closed_url():
    """closed_url is a loopback URL on which nothing listens."""
    return "http://127.0.0.1:%d" % free_port()
