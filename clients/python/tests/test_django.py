"""Tests of dtfc.django.DtfcStorage against a real dtfc node, with a
minimal in-test Django configuration (no database: files are saved
through FieldFile.save(..., save=False))."""

import hashlib
import os

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(INSTALLED_APPS=[], DATABASES={}, USE_TZ=True)
    django.setup()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.files.base import ContentFile  # noqa: E402
from django.db import models  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

import dtfc  # noqa: E402
from dtfc.django import DtfcStorage  # noqa: E402

from conftest import answer  # noqa: E402

BASE = "https://files.example.com"

# The storage of the models is configured per test through settings.
storage = DtfcStorage()


class Document(models.Model):
    file = models.FileField(storage=storage, max_length=128, upload_to="docs/")

    class Meta:
        app_label = "dtfc_tests"


class ShortDocument(models.Model):
    file = models.FileField(storage=storage)  # max_length defaults to 100

    class Meta:
        app_label = "dtfc_tests"


def sha(b):
    return hashlib.sha512(b).hexdigest()


def test_storage(node):
    s = DtfcStorage(urls=[node.url], base_url=BASE + "/")
    data = b"a report\n" * 100
    name = s.save("docs/report.txt", ContentFile(data))
    assert name == sha(data)
    assert s.save("other-name.txt", ContentFile(data)) == name  # same bytes, same name
    assert s.get_available_name("docs/report.txt", max_length=128) == "docs/report.txt"

    # Content already read (by a validator, say) is saved whole.
    read = ContentFile(b"read before the save")
    read.read(5)
    assert s.save("read.txt", read) == sha(b"read before the save")

    assert s.exists(name)
    assert not s.exists(sha(b"never stored"))
    assert not s.exists("report.txt")
    assert s.size(name) == len(data)
    assert s.url(name) == BASE + "/" + name
    assert DtfcStorage(urls=[node.url, "http://127.0.0.1:1"]).url(name) == node.url + "/" + name

    st = s.client.stat(name)  # the file name was recorded and chose the type
    assert st["content_type"].startswith("text/plain")

    with s.open(name) as f:
        assert f.name == name and f.size == len(data)
        assert f.read() == data
    with s.open(name) as f:
        assert b"".join(f.chunks(1000)) == data
    with pytest.raises(ValueError, match="read-only"):
        s.open(name, "wb")

    s.delete(name)  # by default a no-op: a name is shared by every file of its content
    assert s.exists(name)
    deleting = DtfcStorage(urls=[node.url], delete=True)
    deleting.delete(name)
    assert not s.exists(name)
    with pytest.raises(FileNotFoundError):
        s.open(name)
    with pytest.raises(FileNotFoundError):
        s.size(name)
    deleting.delete(sha(b"never stored"))  # a 404 is ignored
    deleting.delete("not-an-id")


def test_file_field(node):
    with override_settings(DTFC_STORAGE={"urls": [node.url], "base_url": BASE}):
        data = os.urandom(1 << 20)
        doc = Document()
        doc.file.save("photo.jpg", ContentFile(data), save=False)
        assert doc.file.name == sha(data)
        assert doc.file.url == BASE + "/" + sha(data)
        assert doc.file.size == len(data)
        doc.file.open()
        try:
            assert doc.file.read() == data
        finally:
            doc.file.close()

        again = Document()
        again.file.save("copy.jpg", ContentFile(data), save=False)
        assert again.file.name == doc.file.name

        # The two share one name: deleting the file of one keeps the
        # other's (delete is off by default).
        doc.file.delete(save=False)
        assert storage.exists(again.file.name)
        with again.file.open("rb") as f:
            assert f.read() == data
        with again.file.open("rb") as f:  # opened again: read again
            assert f.read() == data


def test_max_length_too_short(node):
    with override_settings(DTFC_STORAGE={"urls": [node.url]}):
        data = b"does not fit"
        with pytest.raises(ImproperlyConfigured) as e:
            ShortDocument().file.save("x.txt", ContentFile(data), save=False)
        msg = str(e.value)
        assert "max_length=100" in msg and "max_length=128 or more" in msg
        assert not storage.exists(sha(data))  # refused before anything was sent


def test_settings_and_deconstruct(node):
    s = DtfcStorage(urls=[node.url], base_url=BASE)
    path, args, kwargs = s.deconstruct()
    assert path == "dtfc.django.DtfcStorage"
    assert args == () and kwargs == {"urls": [node.url], "base_url": BASE}
    s2 = import_string(path)(*args, **kwargs)
    name = s2.save("a.txt", ContentFile(b"deconstructed"))
    assert s2.url(name) == BASE + "/" + name
    assert DtfcStorage().deconstruct() == ("dtfc.django.DtfcStorage", (), {})

    with pytest.raises(ImproperlyConfigured, match="urls"):
        DtfcStorage().exists(name)
    with override_settings(DTFC_STORAGE={"url": node.url}):
        with pytest.raises(ImproperlyConfigured, match="unknown key"):
            DtfcStorage().exists(name)

    conf = {"urls": node.url, "base_url": BASE, "delete": True}
    if django.VERSION >= (4, 2):
        from django.core.files.storage import StorageHandler

        handler = StorageHandler({"default": {"BACKEND": "dtfc.django.DtfcStorage", "OPTIONS": conf}})
        default = handler["default"]
    else:
        from django.core.files.storage import get_storage_class

        with override_settings(DEFAULT_FILE_STORAGE="dtfc.django.DtfcStorage", DTFC_STORAGE=conf):
            default = get_storage_class()()
            assert default.exists(name)
    with override_settings(DTFC_STORAGE=conf):
        assert isinstance(default, DtfcStorage)
        assert default.exists(name) and default.url(name) == BASE + "/" + name
        default.delete(name)
        assert not default.exists(name)


def test_open_verifies(stub):
    good = b"the right bytes"
    wrong = b"the wrong bytes"

    def corrupt(req):
        answer(req, 200, wrong if req.path.strip("/") == sha(good) else b"")

    s = DtfcStorage(urls=[stub(corrupt).url])
    with s.open(sha(good)) as f:
        with pytest.raises(dtfc.DigestMismatch):
            f.read()
