"""A small layer over fsspec so the rest of the pipeline addresses files by URI on any store.

It hides the three differences between a local disk and an object store that matter here:
local writes need parent folders and a rename to be atomic (an object PUT is atomic by itself),
object store listings are cached by the client and must be refreshed before they are trusted
(so are existence checks, which s3fs answers from cached listings when it can), and a "move" is
a rename locally but a server-side copy + delete on S3.
"""

from __future__ import annotations

import json
import mimetypes
import os
import posixpath
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .spec import StorageSpec

# a local atomic write goes to "<path><infix><random>" first, then is renamed over <path>
PARTIAL_WRITE_INFIX = ".tmp-"


def join(base: str, *parts: str) -> str:
    """Join URI segments with '/', whatever the store."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


class Store:
    """One filesystem, reached through URIs (plain local paths or protocol://...)."""

    def __init__(self, uri: str, storage: StorageSpec | None = None):
        storage = storage or StorageSpec()
        self.storage = storage
        self.fs, _ = fsspec.core.url_to_fs(uri, **storage.for_uri(uri))
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if "s3" in protocols:  # botocore retries every request (StorageSpec); no s3fs loop around that
            self.fs.retries = 1
        self.local = isinstance(self.fs, LocalFileSystem)
        self._root = self.path(uri)
        self._scheme = uri.split("://", 1)[0] + "://" if "://" in uri else ""

    # -- addressing --------------------------------------------------------------------------

    def path(self, uri: str) -> str:
        """The filesystem path of a URI of this store."""
        return self.fs._strip_protocol(uri)

    def uri(self, path: str) -> str:
        """The URI of a filesystem path, in the same form the store was opened with."""
        if self._scheme and not self.local:
            return self._scheme + path.lstrip("/") if "://" not in path else path
        return path

    # -- reading -----------------------------------------------------------------------------

    def exists(self, uri: str) -> bool:
        """Whether a file or folder exists now (asked of the store, never of a cached listing)."""
        path = self.path(uri)
        self.fs.invalidate_cache(path)
        return self.fs.exists(path)

    def size(self, uri: str) -> int:
        path = self.path(uri)
        self.fs.invalidate_cache(path)
        return int(self.fs.size(path))

    def isdir(self, uri: str) -> bool:
        return self.fs.isdir(self.path(uri))

    def read_bytes(self, uri: str) -> bytes:
        return self.fs.cat_file(self.path(uri))

    def read_many(self, uris: list[str]) -> list[bytes]:
        """Read several files; object stores fetch them concurrently."""
        if not uris:
            return []
        paths = [self.path(u) for u in uris]
        data = self.fs.cat(paths, on_error="raise")
        if isinstance(data, bytes):  # a single path comes back bare
            return [data]
        return [data[p] for p in paths]

    def read_existing(self, uris: list[str]) -> dict[str, bytes]:
        """Read several files, concurrently on object stores; those that do not exist are left out."""
        if not uris:
            return {}
        paths = {self.path(u): u for u in uris}
        for path in paths:
            self.fs.invalidate_cache(path)
        data = self.fs.cat(list(paths), on_error="return")
        if not isinstance(data, dict):  # a single path comes back bare
            data = {next(iter(paths)): data}
        found = {}
        for path, value in data.items():
            if isinstance(value, FileNotFoundError):
                continue
            if isinstance(value, BaseException):
                raise value
            found[paths[path]] = value
        return found

    def read_json(self, uri: str) -> Any:
        return json.loads(self.read_bytes(uri))

    def ls(self, uri: str, *, detail: bool = True) -> list[dict[str, Any]]:
        """Immediate children of a folder, freshly listed (never from the client's cache)."""
        path = self.path(uri)
        self.fs.invalidate_cache(path)
        if not self.fs.exists(path):
            return []
        return self.fs.ls(path, detail=True)

    def find(self, uri: str) -> list[str]:
        """URIs of all files below a folder, freshly listed."""
        path = self.path(uri)
        self.fs.invalidate_cache(path)
        if not self.fs.exists(path):
            return []
        return [self.uri(p) for p in self.fs.find(path)]

    def list_names(self, uri: str) -> list[str]:
        """Names of the files directly in a folder (fresh; no sizes, so one cheap listing)."""
        path = self.path(uri)
        if self.local:
            try:
                return [e.name for e in os.scandir(path) if e.is_file()]
            except FileNotFoundError:
                return []
        return [name for name in self.list_files(uri) if "/" not in name]

    def list_files(self, uri: str) -> dict[str, int]:
        """Every file below a folder, freshly listed: path relative to the folder -> size in bytes."""
        root = self.path(uri).rstrip("/")
        if self.local:
            return _walk_sizes(root)
        if hasattr(self.fs, "call_s3"):
            return self._list_s3(root)
        self.fs.invalidate_cache(root)
        try:
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(root) + 1 :]: int(info.get("size") or 0) for p, info in found.items() if p.startswith(root + "/")}

    def _list_s3(self, root: str) -> dict[str, int]:
        """`list_files` on S3: ListObjectsV2 pages of 1000 keys, read as they come. (s3fs's
        `find` also builds its directory cache, in time quadratic in the number of sub-folders:
        hours for the 100k partition folders of frames/ at 100k sequences.)"""
        bucket, key, _ = self.fs.split_path(root)
        prefix = f"{key}/" if key else ""
        sizes: dict[str, int] = {}
        request = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = self.fs.call_s3("list_objects_v2", **request)
            for item in page.get("Contents", []):
                sizes[item["Key"][len(prefix) :]] = int(item["Size"])
            if not page.get("IsTruncated"):
                return sizes
            request["ContinuationToken"] = page["NextContinuationToken"]

    @contextmanager
    def open(self, uri: str, mode: str = "rb") -> Iterator[IO[Any]]:
        if "w" in mode:
            self._parent(uri)
        with self.fs.open(self.path(uri), mode) as f:
            yield f

    # -- writing -----------------------------------------------------------------------------

    def write_bytes(self, uri: str, data: bytes, *, durable: bool = True) -> None:
        """Write a whole file atomically: readers see the old file or the new one, never half.

        `durable=False` (local disk) skips the file's fsync: the write is as atomic for every
        reader and survives a killed process, but a power loss may undo it until the next
        `sync()`. Object stores store a PUT durably before they answer, either way."""
        path = self.path(uri)
        if self.local:
            os.replace(self._local_temporary(uri, data, durable=durable), path)
        else:
            self.fs.pipe_file(path, data, **self._put_options(uri))  # one PUT: atomic on object stores

    def create_exclusive(self, uri: str, data: bytes) -> None:
        """Write a whole file only if nothing exists at `uri`; FileExistsError otherwise.

        Atomic against a concurrent writer on local disk (a hard link of a complete temporary
        file) and on S3 (a conditional PUT, `If-None-Match: *`); on other stores fsspec checks
        first, then writes.
        """
        path = self.path(uri)
        if not self.local:
            self.fs.pipe_file(path, data, mode="create")
            return
        tmp = self._local_temporary(uri, data)
        try:
            os.link(tmp, path)  # fails with FileExistsError if the path exists, however it was made
        finally:
            os.unlink(tmp)

    def _local_temporary(self, uri: str, data: bytes, *, durable: bool = True) -> str:
        """`data` written (and synced, if `durable`) to a new temporary file beside `uri`; returns its path."""
        self._parent(uri)
        tmp = f"{self.path(uri)}{PARTIAL_WRITE_INFIX}{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def sync(self) -> None:
        """Make every earlier write to this store durable: on local disk, one flush of the whole
        filesystem holding the store (Linux `syncfs`; `os.sync` elsewhere), so many
        `durable=False` writes cost one flush instead of one fsync each. Nothing on object stores."""
        if not self.local:
            return
        folder = self._root
        while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        _syncfs(folder)

    def remove_partial_writes(self, folder_uri: str) -> int:
        """Delete the temporary files of atomic writes that never finished (a process killed
        between write and rename) directly in a folder; returns how many. Object stores have none."""
        if not self.local:
            return 0
        torn = [e["name"] for e in self.ls(folder_uri) if PARTIAL_WRITE_INFIX in e["name"].rsplit("/", 1)[-1]]
        for path in torn:
            self.delete(self.uri(path))
        return len(torn)

    def write_json(self, uri: str, obj: Any, *, durable: bool = True) -> None:
        self.write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode(), durable=durable)

    def upload(self, local_path: str, uri: str) -> None:
        if self.local:
            self._parent(uri)
        self.fs.put_file(local_path, self.path(uri))

    def put_tree(self, local_dir: str, uri: str) -> None:
        """Copy a local folder to `uri` (symbolic links stay links on a local store; object stores
        get every file, uploaded concurrently)."""
        if self.local:
            shutil.copytree(local_dir, self.path(uri), symlinks=True, dirs_exist_ok=True)
            return
        local, remote = [], []
        for folder, _, names in os.walk(local_dir):
            for name in names:
                path = os.path.join(folder, name)
                local.append(path)
                remote.append(join(self.path(uri), os.path.relpath(path, local_dir).replace(os.sep, "/")))
        if local:
            self.fs.put(local, remote)

    def move(self, src_uri: str, dst_uri: str) -> None:
        """Move a file or a folder (a rename locally, server-side copies then deletes on object
        stores)."""
        src, dst = self.path(src_uri), self.path(dst_uri)
        if self.local:
            self._parent(dst_uri)
            os.replace(src, dst)
            return
        self.fs.invalidate_cache(src)
        if self.fs.isdir(src):
            files = self.fs.find(src)
            self.fs.copy(files, [dst + f[len(src) :] for f in files])
            self.fs.rm(files)
        else:
            self.fs.copy(src, dst)
            self.fs.rm_file(src)

    def delete_files(self, uris: list[str]) -> None:
        """Delete several files (missing ones are fine); object stores batch the requests."""
        if not uris:
            return
        paths = [self.path(u) for u in uris]
        for path in paths:
            self.fs.invalidate_cache(path)
        if self.local:
            for path in paths:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        else:
            self.fs.rm(paths)

    def delete(self, uri: str, *, missing_ok: bool = True) -> None:
        """Delete a file or a whole folder."""
        path = self.path(uri)
        self.fs.invalidate_cache(path)
        try:
            if self.fs.isdir(path):
                self.fs.rm(path, recursive=True)
            else:
                self.fs.rm_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def _put_options(self, uri: str) -> dict[str, str]:
        """S3 objects carry their media type, so a report or a preview opens in a browser from the
        bucket (s3fs guesses it for uploaded files, not for written bytes)."""
        media, _ = mimetypes.guess_type(uri)
        return {"ContentType": media} if media and self._scheme in ("s3://", "s3a://") else {}

    def _parent(self, uri: str) -> None:
        if self.local:
            self.fs.makedirs(posixpath.dirname(self.path(uri)), exist_ok=True)


def _syncfs(folder: str) -> None:
    """Flush the filesystem that holds `folder` (all of it, not only this process's writes)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(folder, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()


def _walk_sizes(root: str) -> dict[str, int]:
    """`list_files` on a local disk: os.scandir, without fsspec's per-entry info dicts."""
    sizes: dict[str, int] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(root, rel) if rel else root))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                stack.append(name)
            else:
                sizes[name] = entry.stat(follow_symlinks=False).st_size
    return sizes
