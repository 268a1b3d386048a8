"""Behaviours of the Python client and the Django storage
that a user of the documented integration meets. Each test states what
it expects; they run like the others (go test ./clients/python/, or
DTFC_BIN=./dtfc /usr/bin/python3 -m pytest -q clients/python/tests)."""

import hashlib
import json

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
    django.setup()

from django.core.files.base import ContentFile  # noqa: E402
from django.db import models  # noqa: E402
from django.test import override_settings  # noqa: E402

import dtfc  # noqa: E402
from dtfc.django import DtfcStorage  # noqa: E402

from conftest import answer  # noqa: E402

review_storage = DtfcStorage()


class ReviewAttachment(models.Model):
    file = models.FileField(storage=review_storage, max_length=128, upload_to="attachments/")

    class Meta:
        app_label = "dtfc_review"


def sha(b):
    return hashlib.sha512(b).hexdigest()


def test_delete_keeps_a_file_another_instance_saved(node):
    """Two model instances that save the same bytes get the same name (the
    README says so). Deleting the file of one of them (FieldFile.delete,
    the admin's "clear", django-cleanup, a post_delete handler) must not
    take the other instance's file away: that one still references it and
    nothing told it. Today DtfcStorage.delete deletes the blob on every
    node, so the second instance's file is gone: an acknowledged upload
    lost through the documented integration."""
    with override_settings(DTFC_STORAGE={"urls": [node.url]}):
        data = b"the same invoice, attached to two orders\n" * 50
        first = ReviewAttachment()
        first.file.save("invoice.pdf", ContentFile(data), save=False)
        second = ReviewAttachment()
        second.file.save("invoice-copy.pdf", ContentFile(data), save=False)
        assert first.file.name == second.file.name == sha(data)

        first.file.delete(save=False)  # the first order drops its attachment

        assert review_storage.exists(second.file.name), (
            "deleting one instance's file removed the blob that another "
            "instance still references"
        )
        with second.file.open("rb") as f:
            assert f.read() == data


def test_field_file_can_be_opened_twice(node):
    """`with doc.file.open() as f:` is Django's documented way to read a
    FieldFile; doing it a second time on the same instance (two reads in
    one request, a view that reads then a template tag that reads) works
    with FileSystemStorage. With DtfcStorage the second open raises
    ValueError("The file cannot be reopened."), because the File returned
    by _open is named by the bare ID and Django then looks for a local
    file of that name."""
    with override_settings(DTFC_STORAGE={"urls": [node.url]}):
        data = b"read me twice\n"
        doc = ReviewAttachment()
        doc.file.save("twice.txt", ContentFile(data), save=False)
        with doc.file.open("rb") as f:
            assert f.read() == data
        with doc.file.open("rb") as f:
            assert f.read() == data


def test_field_file_open_after_a_read(node):
    """FieldFile.open() on a file already read (Django seeks it back to the
    start) raises io.UnsupportedOperation with DtfcStorage; it should give
    the content again from the start."""
    with override_settings(DTFC_STORAGE={"urls": [node.url]}):
        data = b"read, then open again\n"
        doc = ReviewAttachment()
        doc.file.save("again.txt", ContentFile(data), save=False)
        assert doc.file.read() == data
        doc.file.open("rb")
        try:
            assert doc.file.read() == data
        finally:
            doc.file.close()


@pytest.mark.parametrize(
    "name",
    [
        "_notes.txt",  # a leading underscore: the node refuses it as a reserved path
        "\u65e5" * 100 + ".txt",  # 104 characters (fits a form's max_length=128), 304 bytes of UTF-8
    ],
    ids=["leading-underscore", "long-utf8"],
)
def test_save_does_not_fail_for_the_filename(node, name):
    """The filename is metadata only (API.md: "files are always retrieved by
    ID"), and the saved name is the ID whatever it was. A save must not
    fail because of it: today a name beginning with "_" or longer than
    255 bytes of UTF-8 (100 CJK characters pass Django's get_valid_name
    and a form's max_length=128) makes the node answer 400 and the whole
    save raises dtfc.HTTPError."""
    s = DtfcStorage(urls=[node.url])
    data = ("content of %s" % name).encode("utf-8")
    assert s.save(name, ContentFile(data)) == sha(data)


def test_client_put_of_a_file_named_with_underscore(node, tmp_path):
    """Client.put(path) records the path's base name; a file whose name
    begins with "_" (Python's own _private.py, _config.yml, ...) cannot be
    uploaded by default today: 400 "paths beginning with _ are reserved".
    The upload is POST /?filename=...: no path begins with "_"."""
    p = tmp_path / "_config.yml"
    p.write_bytes(b"title: x\n")
    res = dtfc.Client(node.url).put(str(p))
    assert res["sha512"] == sha(b"title: x\n")


def test_put_504_for_replicas_is_not_sent_again(stub):
    """A 504 to put(replicas=N) means the node stored the file and waited
    replicas_timeout for the replicas (API.md: "the file is kept and still
    replicates"). Sending the whole body again to the next node is no
    failover: that node stores the same file and waits as long again, so
    a caller with k URLs waits k times replicas_timeout and sends the
    body k times, then gets Unavailable ("no node could serve the
    request") for a file that is stored. The 504 should be raised as the
    HTTPError it is, as a 4xx is."""
    msg = "replicas=2: only 1 replica(s) hold it after 30s; the file is stored and still replicates"

    def timed_out(req):
        n = int(req.headers.get("Content-Length") or 0)
        if req.headers.get("Expect", "").lower() == "100-continue":
            req.send_response_only(100)
            req.end_headers()
        req.rfile.read(n)
        answer(req, 504, json.dumps({"error": msg}).encode(), {"Content-Type": "application/json"})

    first = stub(timed_out)
    second = stub(timed_out)
    c = dtfc.Client([first.url, second.url])
    with pytest.raises(dtfc.HTTPError) as e:
        c.put(b"a file that needs two replicas", filename="x.bin", replicas=2)
    assert e.value.status == 504
    assert second.requests == [], "the upload was sent again to the next node after a 504"


def test_delete_unmodified_since(node):
    """A conditional delete (unmodified_since) keeps a blob uploaded after
    that time (412), and deletes one that was not."""
    import time

    c = dtfc.Client(node.url)
    data = b"collected only if nobody uploaded it again\n"
    c.put(data, filename="old.txt")
    with pytest.raises(dtfc.HTTPError) as e:
        c.delete(sha(data), unmodified_since=time.time() - 3600)
    assert e.value.status == 412
    assert c.stat(sha(data)) is not None
    assert c.delete(sha(data), unmodified_since=time.time() + 2)["deleted"] is True
    assert c.stat(sha(data)) is None


def test_exists_of_a_blocked_file(node):
    """exists() of a blocked ID (the deny list: 451) is False, not an
    HTTPError: there is no file to read."""
    import urllib.request

    data = b"taken down\n"
    s = DtfcStorage(urls=[node.url])
    name = s.save("down.txt", ContentFile(data))
    assert s.exists(name)
    req = urllib.request.Request(
        node.url + "/_deny/" + name,
        data=json.dumps({"status": 451, "reason": "test"}).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    assert s.exists(name) is False
