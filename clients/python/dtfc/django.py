"""A Django storage backend that keeps files in a dtfc cluster.

A saved file's name is exactly its blob ID (the 128-hex SHA-512 of its
bytes): saving the same bytes twice gives the same name, and a FileField
holding it needs max_length=128 or more. Options (each may instead be a
key of the settings.DTFC_STORAGE dict; options given to the constructor
win):

- urls: the node base URLs (a list, or one string), tried in order;
- token: the write token (Authorization: Bearer); keep it in settings
  rather than in a field's storage=, where migrations would copy it;
- base_url: where browsers fetch files (url(name) is base_url + "/" +
  name); default the first of urls;
- timeout: seconds for each socket operation (default 30);
- delete: whether delete(name) deletes the blob throughout the cluster
  (default False: it does nothing). A name is its content's ID, so every
  file saved with the same bytes, by any record, shares it: deleted for
  one record (FieldFile.delete, the admin's "clear", django-cleanup), it
  would be gone for all. Set it only where each blob is referenced once;
  otherwise collect unreferenced blobs from the references themselves
  (GET /_blobs lists each blob with its upload time; a DELETE with
  If-Unmodified-Since keeps one uploaded again since).

Django 4.2 and later::

    STORAGES = {
        "default": {
            "BACKEND": "dtfc.django.DtfcStorage",
            "OPTIONS": {"urls": ["http://10.0.0.1:8080"], "base_url": "https://files.example.com"},
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }

Django 3.2::

    DEFAULT_FILE_STORAGE = "dtfc.django.DtfcStorage"
    DTFC_STORAGE = {"urls": ["http://10.0.0.1:8080"], "token": "..."}
"""

import os

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import File
from django.core.files.storage import Storage
from django.utils.deconstruct import deconstructible

import dtfc

__all__ = ["DtfcStorage"]

# ID_LENGTH is the length of every name this storage gives a file.
ID_LENGTH = 128

_OPTIONS = ("urls", "token", "base_url", "timeout", "delete")


@deconstructible
class DtfcStorage(Storage):
    """DtfcStorage stores files in dtfc; a file's name is its blob ID."""

    def __init__(self, urls=None, token=None, base_url=None, timeout=None, delete=None):
        self._given = {"urls": urls, "token": token, "base_url": base_url, "timeout": timeout, "delete": delete}
        self._client = None
        self._client_key = None

    def _option(self, key):
        v = self._given[key]
        if v is not None:
            return v
        conf = getattr(settings, "DTFC_STORAGE", None) or {}
        if not isinstance(conf, dict):
            raise ImproperlyConfigured("settings.DTFC_STORAGE must be a dict with keys %s" % ", ".join(_OPTIONS))
        unknown = set(conf) - set(_OPTIONS)
        if unknown:
            raise ImproperlyConfigured(
                "settings.DTFC_STORAGE: unknown key(s) %s; the keys are %s"
                % (", ".join(sorted(unknown)), ", ".join(_OPTIONS))
            )
        return conf.get(key)

    def _urls(self):
        urls = self._option("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise ImproperlyConfigured(
                "DtfcStorage needs the dtfc node URLs: give OPTIONS {'urls': [...]} "
                "(STORAGES) or settings.DTFC_STORAGE = {'urls': [...]}"
            )
        return list(urls)

    @property
    def client(self):
        """client is the dtfc.Client for the current options (settings
        are read when it is first needed, and again if they change)."""
        key = (tuple(self._urls()), self._option("token"), self._option("timeout"))
        if self._client is None or self._client_key != key:
            timeout = key[2] if key[2] is not None else 30
            self._client = dtfc.Client(list(key[0]), token=key[1], timeout=timeout)
            self._client_key = key
        return self._client

    # Names.

    def get_available_name(self, name, max_length=None):
        # The stored name is the content's ID, chosen by _save: there is
        # nothing to make unique, and the name must not be altered. What
        # can be checked here is that the field can hold an ID.
        if max_length is not None and max_length < ID_LENGTH:
            raise ImproperlyConfigured(
                "DtfcStorage names a file by its 128-character SHA-512 ID, but this FileField "
                "has max_length=%d: set max_length=%d or more on the field (and migrate)"
                % (max_length, ID_LENGTH)
            )
        return name

    def _save(self, name, content):
        try:
            content.seek(0)
        except (AttributeError, OSError, ValueError):
            pass  # not seekable: sent from where it is (and not re-sent to another node)
        filename = _fit_filename(os.path.basename(name or "")) or None
        res = self.client.put(content, filename=filename, content_type=getattr(content, "content_type", None))
        return res["sha512"]

    # Reading.

    def _open(self, name, mode="rb"):
        if any(c in mode for c in "wax+"):
            raise ValueError("DtfcStorage files are read-only (mode %r): save new content with save()" % mode)
        self._check_name(name)
        return _DtfcFile(self._reader(name), name, self)

    def _reader(self, name):
        try:
            return self.client.open(name)
        except dtfc.NotFound as e:
            raise FileNotFoundError("dtfc: no node holds %s" % name) from e

    def exists(self, name):
        if not dtfc.is_id(name):
            return False
        try:
            return self.client.stat(name) is not None
        except dtfc.HTTPError as e:
            if e.status in (403, 451):
                return False  # blocked (the deny list): no file to read
            raise

    def size(self, name):
        self._check_name(name)
        st = self.client.stat(name)
        if st is None:
            raise FileNotFoundError("dtfc: no node holds %s" % name)
        return st["size"]

    def url(self, name):
        self._check_name(name)
        base = self._option("base_url") or self._urls()[0]
        return base.rstrip("/") + "/" + name.lower()

    def delete(self, name):
        if not name:
            raise ValueError("The name must be given to delete().")
        if not dtfc.is_id(name):
            return  # no file of this storage has such a name
        if not self._option("delete"):
            return  # shared by every file of the same content: see the module's doc
        try:
            self.client.delete(name)
        except dtfc.NotFound:
            pass

    def _check_name(self, name):
        if not dtfc.is_id(name):
            raise ValueError("DtfcStorage: %r is not a dtfc name (a 128-hex SHA-512 ID)" % (name,))


# MAX_FILENAME_BYTES is the longest filename (UTF-8) a node records.
MAX_FILENAME_BYTES = 255


def _fit_filename(name):
    """_fit_filename cuts name to what a node records (255 bytes of UTF-8),
    keeping its extension, which chooses the Content-Type: the filename is
    only metadata, and a save must not fail for it (a form's max_length
    counts characters, and 100 CJK ones are 300 bytes)."""
    if len(name.encode("utf-8")) <= MAX_FILENAME_BYTES:
        return name
    stem, ext = os.path.splitext(name)
    if len(ext.encode("utf-8")) > 32:
        stem, ext = name, ""
    room = MAX_FILENAME_BYTES - len(ext.encode("utf-8"))
    return stem.encode("utf-8")[:room].decode("utf-8", "ignore") + ext


class _DtfcFile(File):
    """A blob read from dtfc. Its stream reads once, forward only: open()
    (FieldFile.open, again, or after a read) reads it again from the
    cluster, where django's File would look for a local file named by the
    ID (and raise "The file cannot be reopened", or open such a file
    unverified)."""

    def __init__(self, reader, name, storage):
        super().__init__(reader, name=name)
        self._storage = storage

    def open(self, mode=None):
        if mode and any(c in mode for c in "wax+"):
            raise ValueError("DtfcStorage files are read-only (mode %r): save new content with save()" % mode)
        if not self.closed:
            self.file.close()
        self.file = self._storage._reader(self.name)
        return self

