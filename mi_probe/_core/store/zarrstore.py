"""The activation store: captured arrays in zarr (v3) groups on a local folder or any
fsspec filesystem, one entry per :class:`~.keys.StoreKey`.

Layout under the store's root::

    entries/<digest>/<writer>/    a zarr group: the entry's arrays, chunked along N
    entries/<digest>/ready.json   written last: the key, the writer, shapes, checksums
    entries/<digest>/used.json    when the entry was last read (best effort)

Each writer writes a folder of its own (``<host>-<pid>-<random>``) and only then
publishes it with ``ready.json``, so an interrupted write is never read (its folder has
no ``ready.json``; ``prune`` removes it) and two processes writing one key never write
the same file: on a local filesystem the marker is created with a hard link, which fails
for the second writer, who then deletes its folder; elsewhere it is written after a
check for an existing marker, and a writer that loses that race only leaves an unread
folder behind. A read checks each array's shape, dtype and checksum against the marker,
so a partial or pruned entry is a miss, never wrong numbers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from mi_probe._core.store.keys import StoreKey
from mi_probe.errors import RunError

if TYPE_CHECKING:
    import fsspec

ENTRIES = "entries"
READY = "ready.json"
USED = "used.json"
#: target bytes of one chunk (rows of an array): large enough that a chunk costs one
#: request on an object store, small enough that streaming holds few in memory
CHUNK_BYTES = 4 * 2**20
#: an unpublished writer folder younger than this may belong to a running write; prune
#: leaves it alone
ORPHAN_AGE_S = 3600.0


def zarr_available() -> str | None:
    """None when zarr 3 can be imported, else why not."""
    try:
        import zarr
    except ImportError:
        return "zarr is not installed (pip install 'mi-probe[store]')"
    if int(zarr.__version__.split(".")[0]) < 3:
        return f"zarr {zarr.__version__} is installed; the store needs zarr >= 3"
    return None


def _is_url(location: str) -> bool:
    return "://" in location


def _codecs() -> Any:
    from zarr.codecs import BloscCodec

    # lossless (reads are bit-identical); byte shuffle + lz4 costs little next to a
    # forward pass and shrinks post-ReLU maps and small-magnitude floats
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


@dataclass(frozen=True)
class EntryInfo:
    """A published entry as ``cache list`` shows it."""

    digest: str
    key: dict[str, Any]
    arrays: dict[str, dict[str, Any]]
    nbytes: int
    created: float
    last_used: float
    info: dict[str, Any] = field(default_factory=dict)


class ActivationStore:
    """Entries of captured arrays under ``location`` (a folder, or an fsspec URL such as
    ``s3://bucket/acts``, ``file:///shared/acts`` or ``memory://acts``).

    Nothing is touched on construction, so a store can be described on a machine that
    cannot reach it. ``log`` receives one line per failed read or write (the store is a
    cache: a failure is a miss, never an error of the run)."""

    def __init__(self, location: str | os.PathLike[str], *,
                 storage_options: Mapping[str, Any] | None = None,
                 chunk_bytes: int = CHUNK_BYTES,
                 log: Callable[[str], None] | None = None) -> None:
        text = os.fspath(location)
        if not text:
            raise RunError("activation store: empty location; give a folder or a URL")
        self.is_local = not _is_url(text)
        self.location = (str(Path(text).expanduser().absolute()) if self.is_local
                         else text.rstrip("/"))
        self.storage_options = dict(storage_options or {})
        self.chunk_bytes = int(chunk_bytes)
        self.log = log or (lambda message: None)
        self._fs: Any = None
        self._root: str = ""

    def __repr__(self) -> str:
        return f"ActivationStore({self.location!r})"

    # ----------------------------------------------------------------- filesystem
    @property
    def fs(self) -> "fsspec.AbstractFileSystem":
        if self._fs is None:
            import fsspec.core
            from fsspec.implementations.local import LocalFileSystem

            if self.is_local:
                self._fs, self._root = LocalFileSystem(auto_mkdir=True), self.location
            else:
                options = dict(self.storage_options)
                try:
                    self._fs, self._root = fsspec.core.url_to_fs(self.location, **options)
                except (ImportError, ValueError) as exc:
                    raise RunError(f"activation store {self.location}: cannot open its "
                                   f"filesystem ({type(exc).__name__}: {exc})") from None
                if "file" in _protocols(self._fs):  # file://: create folders as zarr writes
                    self._fs, self._root = fsspec.core.url_to_fs(self.location, auto_mkdir=True,
                                                                 **options)
        return self._fs

    def _path(self, *parts: str) -> str:
        _ = self.fs
        return "/".join([self._root.rstrip("/"), *parts])

    def _url(self, path: str) -> str:
        """A filesystem path back as something zarr opens (a URL for fsspec stores)."""
        if self.is_local:
            return path
        protocol = _protocols(self.fs)[0]
        return f"{protocol}://{path.lstrip('/')}" if protocol != "file" else f"file://{path}"

    def _zarr_store(self, path: str, read_only: bool) -> Any:
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(path, read_only=read_only)
        options = dict(self.storage_options)
        if "file" in _protocols(self.fs):
            options.setdefault("auto_mkdir", True)
        return FsspecStore.from_url(self._url(path), storage_options=options or None,
                                    read_only=read_only)

    def _read_json(self, path: str) -> dict[str, Any] | None:
        try:
            if self.is_local:  # the common case, without fsspec's file object
                with open(path, "rb") as handle:
                    data = handle.read()
            else:
                with self.fs.open(path, "rb") as handle:
                    data = handle.read()
            value = json.loads(data.decode())
        except (OSError, ValueError, UnicodeDecodeError):
            return None  # absent, half-written by a writer that was killed, unreadable
        return value if isinstance(value, dict) else None

    # ----------------------------------------------------------------- entries
    def marker(self, digest: str) -> dict[str, Any] | None:
        """The published marker of entry ``digest`` (None when it is not published)."""
        return self._read_json(self._path(ENTRIES, digest, READY))

    def _markers(self, digests: Sequence[str]) -> list[dict[str, Any] | None]:
        """The markers of several entries (one concurrent request on a remote store)."""
        if self.is_local or len(digests) < 2:
            return [self.marker(d) for d in digests]
        paths = [self._path(ENTRIES, d, READY) for d in digests]
        try:
            found = self.fs.cat(paths, on_error="omit")
        except OSError:
            return [self.marker(d) for d in digests]
        out: list[dict[str, Any] | None] = []
        for path in paths:
            data = found.get(path)
            try:
                value = json.loads(data.decode()) if data is not None else None
            except (ValueError, UnicodeDecodeError):
                value = None
            out.append(value if isinstance(value, dict) else None)
        return out

    def contains(self, key: StoreKey) -> bool:
        marker = self.marker(key.digest)
        return marker is not None and marker.get("key") == key.fields()

    def read(self, key: StoreKey) -> dict[str, torch.Tensor] | None:
        """The arrays stored under ``key`` (CPU tensors, bit-identical to what was
        written), or None when there is no complete entry for it."""
        found = self.read_many([key])
        return None if found is None else found[0]

    def read_many(self, keys: Sequence[StoreKey]) -> list[dict[str, torch.Tensor]] | None:
        """The arrays of every key, in order, or None when any entry is missing or
        unreadable (a capture needs all of them). The entries are read concurrently
        (one round of requests on an object store, not one per array)."""
        if zarr_available() is not None:
            return None
        markers: list[dict[str, Any]] = []
        for key, marker in zip(keys, self._markers([key.digest for key in keys])):
            if marker is None or marker.get("key") != key.fields():
                return None
            markers.append(marker)

        async def everything() -> list[dict[str, torch.Tensor]]:
            return list(await asyncio.gather(*(self._read_entry(key.digest, marker)
                                               for key, marker in zip(keys, markers))))

        try:
            found = _sync(everything())
        except Exception as exc:  # a failed read is a miss: capture again
            self.log(f"activation store: an entry at {self.location} is unreadable "
                     f"({type(exc).__name__}: {exc}); capturing instead")
            return None
        self._touch([key.digest for key in keys])
        return found

    async def _read_entry(self, digest: str, marker: dict[str, Any]
                          ) -> dict[str, torch.Tensor]:
        from zarr.api.asynchronous import open_array

        store = self._zarr_store(self._path(ENTRIES, digest, str(marker["writer"])),
                                 read_only=True)

        async def one(name: str, meta: dict[str, Any]) -> tuple[str, torch.Tensor]:
            array = await open_array(store=store, path=name, mode="r")
            values = np.ascontiguousarray(await array.getitem(...))
            if (list(values.shape) != list(meta["shape"]) or str(values.dtype) != meta["dtype"]
                    or _checksum([values]) != meta["checksum"]):
                raise ValueError(f"entry {digest}: array {name} does not match its marker "
                                 "(a partial or pruned entry)")
            return name, torch.from_numpy(values)

        return dict(await asyncio.gather(*(one(n, m) for n, m in marker["arrays"].items())))

    def open_rows(self, key: StoreKey, name: str) -> "StoredRows | None":
        """Array ``name`` of ``key``'s entry, for reading by rows without loading it
        whole (None when there is no complete entry). Nothing is read yet; every row
        block read is checked against the marker's shape and dtype, and a full pass in
        order (:meth:`StoredRows.chunks`) against its checksum."""
        if zarr_available() is not None:
            return None
        marker = self.marker(key.digest)
        if marker is None or marker.get("key") != key.fields():
            return None
        meta = marker.get("arrays", {}).get(name)
        if meta is None:
            return None
        import zarr

        try:
            store = self._zarr_store(self._path(ENTRIES, key.digest, str(marker["writer"])),
                                     read_only=True)
            array = zarr.open_array(store=store, path=name, mode="r")
        except Exception as exc:  # unreadable: a miss
            self.log(f"activation store: entry {key.digest} at {self.location} is "
                     f"unreadable ({type(exc).__name__}: {exc})")
            return None
        if list(array.shape) != list(meta["shape"]) or str(array.dtype) != meta["dtype"]:
            return None
        self._touch([key.digest])
        return StoredRows(array, meta, f"{key.digest}/{name}")

    def _touch(self, digests: Sequence[str]) -> None:
        data = json.dumps({"time": time.time()}).encode()
        try:
            if self.is_local:
                for digest in digests:
                    with open(self._path(ENTRIES, digest, USED), "wb") as handle:
                        handle.write(data)
            else:
                self.fs.pipe({self._path(ENTRIES, d, USED): data for d in digests})
        except Exception:  # a read-only store: last use is only a hint for prune
            pass

    def writer(self, key: StoreKey, info: Mapping[str, Any] | None = None,
               rows_hint: int | None = None) -> "EntryWriter":
        """A writer for ``key``'s entry: ``append`` rows as they come, ``commit`` to
        publish (or use it as a context manager: an exception aborts it)."""
        if (reason := zarr_available()) is not None:
            raise RunError(f"activation store: {reason}")
        return EntryWriter(self, key, dict(info or {}), rows_hint)

    def capture_writer(self, keys: Mapping[str, StoreKey], outputs: str,
                       info: Mapping[str, Any] | None = None,
                       rows_hint: int | None = None) -> "CaptureWriter":
        """Writers for a capture's entries (``keys`` by site name; ``outputs`` names
        the labels-and-logits entry among them); entries already stored are skipped."""
        return CaptureWriter(self, keys, outputs, dict(info or {}), rows_hint)

    def write(self, key: StoreKey, arrays: Mapping[str, torch.Tensor],
              info: Mapping[str, Any] | None = None) -> bool:
        """Store ``arrays`` (each (N, ...) along the same N) under ``key``; False when the
        entry already existed (nothing is written then)."""
        if self.contains(key):
            return False
        with self.writer(key, info) as writer:
            for name, array in arrays.items():
                writer.append(name, array)
        return writer.published

    def entries(self) -> list[EntryInfo]:
        """Every published entry, oldest use first."""
        found = []
        for digest in self._digests():
            marker = self.marker(digest)
            if marker is None:
                continue
            used = self._read_json(self._path(ENTRIES, digest, USED)) or {}
            created = float(marker.get("created", 0.0))
            found.append(EntryInfo(digest=digest, key=dict(marker.get("key", {})),
                                   arrays=dict(marker.get("arrays", {})),
                                   nbytes=int(marker.get("nbytes", 0)), created=created,
                                   last_used=float(used.get("time", created)),
                                   info=dict(marker.get("info", {}))))
        return sorted(found, key=lambda e: (e.last_used, e.digest))

    def _digests(self) -> list[str]:
        base = self._path(ENTRIES)
        try:
            listed = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in listed)

    def unpublished(self, now: float | None = None) -> list[tuple[str, float]]:
        """Writer folders that no marker names, with their age in seconds: writes in
        progress, interrupted ones, and the losers of a race on a remote store."""
        now = time.time() if now is None else now
        out = []
        for digest in self._digests():
            folder = self._path(ENTRIES, digest)
            marker = self.marker(digest)
            named = None if marker is None else str(marker.get("writer"))
            try:
                children = self.fs.ls(folder, detail=True)
            except FileNotFoundError:
                continue
            for child in children:
                name = str(child["name"]).rstrip("/").rsplit("/", 1)[-1]
                if child.get("type") != "directory" or name == named:
                    continue
                out.append((f"{digest}/{name}", now - _mtime(self.fs, child)))
        return out

    def remove(self, digest: str) -> None:
        """Delete entry ``digest``: its marker first (it stops being read), then its
        folders."""
        folder = self._path(ENTRIES, digest)
        try:
            self.fs.rm(self._path(ENTRIES, digest, READY))
        except FileNotFoundError:
            pass
        try:
            self.fs.rm(folder, recursive=True)
        except FileNotFoundError:
            pass

    def prune(self, *, older_than_s: float | None = None, max_bytes: int | None = None,
              everything: bool = False, now: float | None = None,
              dry_run: bool = False) -> list[EntryInfo]:
        """Delete entries not used for ``older_than_s`` seconds, then the least recently
        used ones until at most ``max_bytes`` remain, or (``everything``) all of them;
        unpublished writer folders older than an hour go too. Returns what was deleted
        (``dry_run``: what would be, deleting nothing)."""
        now = time.time() if now is None else now
        entries = self.entries()
        doomed: list[EntryInfo] = []
        if everything:
            doomed = list(entries)
        else:
            if older_than_s is not None:
                doomed = [e for e in entries if now - e.last_used > older_than_s]
            if max_bytes is not None:
                kept = [e for e in entries if e not in doomed]
                total = sum(e.nbytes for e in kept)
                for entry in kept:  # least recently used first
                    if total <= max_bytes:
                        break
                    doomed.append(entry)
                    total -= entry.nbytes
        if dry_run:
            return doomed
        for entry in doomed:
            self.remove(entry.digest)
        for folder, age in self.unpublished(now):
            if age > ORPHAN_AGE_S:
                try:
                    self.fs.rm(self._path(ENTRIES, folder), recursive=True)
                except FileNotFoundError:
                    pass
        for digest in self._digests():  # a folder left empty
            if not self.fs.ls(self._path(ENTRIES, digest), detail=False):
                try:
                    self.fs.rm(self._path(ENTRIES, digest), recursive=True)
                except FileNotFoundError:
                    pass
        return doomed


class EntryWriter:
    """Writes one entry's arrays into a folder of its own, chunk by chunk as rows
    arrive, and publishes it on :meth:`commit`. Rows are buffered only up to one chunk,
    so a capture can hand over each batch as it is computed. The zarr calls run on
    zarr's event loop, one hop per chunk and one per commit (not one per file)."""

    def __init__(self, store: ActivationStore, key: StoreKey, info: dict[str, Any],
                 rows_hint: int | None) -> None:
        self.store = store
        self.key = key
        self.info = info
        self.rows_hint = rows_hint
        self.digest = key.digest
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = store._path(ENTRIES, self.digest, self.name)
        self._group: Any = None
        self._arrays: dict[str, _ArrayWriter] = {}
        self.published = False
        self.closed = False

    async def _open(self) -> Any:
        if self._group is None:
            from zarr.api.asynchronous import open_group

            self._group = await open_group(
                store=self.store._zarr_store(self.path, read_only=False), mode="w-",
                attributes={"key": self.key.fields(), "info": self.info})
        return self._group

    def append(self, name: str, rows: torch.Tensor | np.ndarray) -> None:
        """Add rows (along the first axis) to array ``name``."""
        if self.closed:
            raise RunError(f"activation store: entry {self.digest} is already closed")
        part = rows.detach().to("cpu").numpy() if isinstance(rows, torch.Tensor) else rows
        part = np.ascontiguousarray(part)
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = _ArrayWriter(name, part, self.store.chunk_bytes,
                                                      self.rows_hint)
        block = array.append(part)
        if block is not None:
            try:
                _sync(self._write(array, block))
            except BaseException:
                self.abort()
                raise

    async def _write(self, array: "_ArrayWriter", block: np.ndarray) -> None:
        await array.write(await self._open(), block)

    async def _finish(self) -> None:
        group = await self._open()
        await asyncio.gather(*(a.finish(group) for a in self._arrays.values()))

    def _publish(self) -> bool:
        rows = {a.rows for a in self._arrays.values()}
        if len(rows) > 1:
            raise RunError(f"activation store: the arrays of entry {self.digest} have "
                           f"different lengths {sorted(rows)}")
        marker = {"key": self.key.fields(), "writer": self.name, "created": time.time(),
                  "info": self.info, "nbytes": _du(self.store.fs, self.path),
                  "arrays": {n: a.meta() for n, a in self._arrays.items()}}
        self.closed = True
        self.published = _publish(self.store, self.digest, marker)
        if not self.published:
            _remove(self.store.fs, self.path)
        return self.published

    def commit(self) -> bool:
        """Write what is buffered and publish the entry; False when another writer
        published the same key first (this writer's folder is then deleted)."""
        if self.closed:
            return self.published
        try:
            _sync(self._finish())
            return self._publish()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop this writer's folder; nothing was published."""
        if not self.closed:
            self.closed = True
            _remove(self.store.fs, self.path)

    def __enter__(self) -> "EntryWriter":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


class CaptureWriter:
    """The store side of one capture: an :class:`EntryWriter` per site not yet stored
    and one for the outputs (labels, logits), fed batch by batch.

    ``append(site_name, rows)`` and ``append_outputs(labels, logits)`` take each batch's
    rows as the capture produces them; :meth:`commit` writes what is buffered in every
    entry at once and publishes them (after the caller has checked the capture);
    :meth:`abort` drops them all. A write that fails (a full disk, a lost connection)
    never fails the capture: it is logged once, the entries are dropped and the rest of
    the capture is not written (``failed``)."""

    def __init__(self, store: ActivationStore, keys: Mapping[str, StoreKey], outputs: str,
                 info: Mapping[str, Any], rows_hint: int | None = None) -> None:
        self.store = store
        self.outputs = outputs
        self.failed = False
        self.writers = {name: store.writer(key, info, rows_hint)
                        for name, key in keys.items() if not store.contains(key)}

    def _guarded(self, action: Callable[[], Any]) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as exc:
            self.failed = True
            self.abort()
            self.store.log(f"activation store: could not write to {self.store.location} "
                           f"({type(exc).__name__}: {exc}); the run goes on without it")

    def append(self, site: str, rows: torch.Tensor) -> None:
        writer = self.writers.get(site)
        if writer is not None:
            self._guarded(lambda: writer.append("acts", rows))

    def append_outputs(self, labels: torch.Tensor, logits: torch.Tensor | None) -> None:
        writer = self.writers.get(self.outputs)
        if writer is None:
            return

        def both() -> None:
            writer.append("labels", labels)
            if logits is not None:
                writer.append("logits", logits)

        self._guarded(both)

    def commit(self) -> bool:
        """Publish every entry; False when writing failed (nothing of it is read)."""
        async def finish_all() -> None:
            await asyncio.gather(*(w._finish() for w in self.writers.values()
                                   if not w.closed))

        def publish() -> None:
            _sync(finish_all())
            for writer in self.writers.values():
                if not writer.closed:
                    writer._publish()

        self._guarded(publish)
        return not self.failed

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


class _ArrayWriter:
    """One zarr array written in whole chunks along N (rows buffered up to a chunk);
    its checksum covers the bytes in order, so it equals the whole array's."""

    def __init__(self, name: str, first: np.ndarray, chunk_bytes: int,
                 rows_hint: int | None) -> None:
        if first.ndim < 1:
            raise RunError(f"activation store: array {name!r} must have a first (sample) axis")
        self.name = name
        self.tail = tuple(int(s) for s in first.shape[1:])
        self.dtype = first.dtype
        row_bytes = max(1, int(np.prod(self.tail, dtype=np.int64)) * first.dtype.itemsize)
        self.chunk_rows = max(1, chunk_bytes // row_bytes)
        self.rows_hint = rows_hint
        self.array: Any = None
        self.rows = 0  # rows written to the array
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.hash = hashlib.blake2b(digest_size=16)

    def append(self, part: np.ndarray) -> np.ndarray | None:
        """Take ``part``; return the whole chunks now ready to write (None: none)."""
        if tuple(part.shape[1:]) != self.tail or part.dtype != self.dtype:
            raise RunError(f"activation store: array {self.name!r} got rows "
                           f"{part.dtype}{tuple(part.shape)}, expected {self.dtype} rows of "
                           f"{self.tail}")
        self.hash.update(_buffer(part))
        if self.pending_rows:
            self.pending.append(part)
            part = np.concatenate(self.pending)
            self.pending, self.pending_rows = [], 0
        whole = (part.shape[0] // self.chunk_rows) * self.chunk_rows
        if part.shape[0] > whole:  # kept until a chunk is full (a copy: the caller's
            rest = part[whole:].copy()  # buffer may be reused)
            self.pending, self.pending_rows = [rest], rest.shape[0]
        return part[:whole] if whole else None

    async def write(self, group: Any, block: np.ndarray) -> None:
        end = self.rows + block.shape[0]
        if self.array is None:
            rows = max(end, self.rows_hint or 0)
            # zarr stores whole chunks: one longer than the array would be padding
            self.chunk_rows = max(1, min(self.chunk_rows, rows))
            self.array = await group.create_array(
                self.name, shape=(rows, *self.tail), dtype=self.dtype,
                chunks=(self.chunk_rows, *self.tail), compressors=_codecs(), fill_value=0)
        elif end > self.array.shape[0]:
            await self.array.resize((max(end, 2 * self.array.shape[0]), *self.tail))
        await self.array.setitem(slice(self.rows, end), block)
        self.rows = end

    async def finish(self, group: Any) -> None:
        if self.pending_rows or self.array is None:
            block = (np.concatenate(self.pending) if len(self.pending) > 1 else
                     self.pending[0] if self.pending else
                     np.empty((0, *self.tail), dtype=self.dtype))
            self.pending, self.pending_rows = [], 0
            await self.write(group, block)
        if self.array.shape[0] != self.rows:
            await self.array.resize((self.rows, *self.tail))

    def meta(self) -> dict[str, Any]:
        return {"shape": [self.rows, *self.tail], "dtype": str(self.dtype),
                "chunk_rows": self.chunk_rows, "checksum": self.hash.hexdigest()}


class StoredRows:
    """One stored array read by rows: ``rows(start, end)`` for a block, ``chunks()`` for
    a pass over every row in the store's own chunks (what streaming estimators and
    suffix evaluation consume: memory is bounded by a chunk, not by N). A pass that
    reaches the end verifies the array's checksum and raises :class:`StoreCorrupt` on a
    mismatch, so a caller never keeps numbers computed from a damaged entry."""

    def __init__(self, array: Any, meta: Mapping[str, Any], label: str) -> None:
        self.array = array
        self.meta = dict(meta)
        self.label = label
        self.shape = tuple(int(s) for s in meta["shape"])
        self.dtype = np.dtype(meta["dtype"])
        self.chunk_rows = int(meta.get("chunk_rows") or array.chunks[0])

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def rows(self, start: int, end: int) -> torch.Tensor:
        """Rows ``[start, end)`` as a CPU tensor."""
        values = np.ascontiguousarray(self.array[start:end])
        if values.dtype != self.dtype or values.shape[1:] != self.shape[1:]:
            raise StoreCorrupt(f"activation store: {self.label} returned "
                               f"{values.dtype}{values.shape}, its marker says "
                               f"{self.dtype}{self.shape}")
        return torch.from_numpy(values)

    def chunks(self, rows: int | None = None) -> Iterable[tuple[int, torch.Tensor]]:
        """(start, block) over every row in order, ``rows`` at a time (default: the
        stored chunk); the checksum is verified after the last block."""
        step = max(1, int(rows or self.chunk_rows))
        digest = hashlib.blake2b(digest_size=16)
        for start in range(0, self.shape[0], step):
            block = self.rows(start, min(start + step, self.shape[0]))
            digest.update(_buffer(block.numpy()))
            yield start, block
        if digest.hexdigest() != self.meta["checksum"]:
            raise StoreCorrupt(f"activation store: {self.label} does not match its "
                               "checksum (a damaged entry); prune it with `mi-probe cache "
                               "prune` and run again")

    def read(self) -> torch.Tensor:
        """Every row (checked against the checksum)."""
        parts = [block for _, block in self.chunks()]
        return torch.cat(parts) if parts else torch.from_numpy(np.empty(self.shape, self.dtype))


class StoreCorrupt(RunError):
    """A stored array read by rows did not match its marker."""


def _sync(coroutine: Any) -> Any:
    """Run a coroutine on zarr's event loop (what zarr's synchronous API does)."""
    from zarr.core.sync import sync

    return sync(coroutine)


def _checksum(parts: Iterable[np.ndarray]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(_buffer(np.ascontiguousarray(part)))
    return digest.hexdigest()


def _buffer(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, without a copy."""
    flat: Any = array.view(np.uint8).reshape(-1)  # numpy's stubs do not declare Buffer
    return memoryview(flat) if array.size else memoryview(b"")


def _publish(store: ActivationStore, digest: str, marker: dict[str, Any]) -> bool:
    """Write ``ready.json`` unless another writer did: atomically and exclusively on a
    local filesystem (a hard link fails when the name exists), after a check elsewhere."""
    path = store._path(ENTRIES, digest, READY)
    data = json.dumps(marker, sort_keys=True).encode()
    if store.is_local or "file" in _protocols(store.fs):
        local = path.split("://", 1)[-1]
        temp = f"{local}.{marker['writer']}.tmp"
        # no fsync: after a crash a marker whose data did not reach the disk fails its
        # checksums on read (a miss), so durability costs nothing here
        with open(temp, "wb") as handle:
            handle.write(data)
        try:
            os.link(temp, local)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: rename (last writer wins)
            if os.path.exists(local):
                return False
            os.replace(temp, local)
            return True
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
    if store.fs.exists(path):
        return False
    store.fs.pipe_file(path, data)
    return True


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _du(fs: Any, path: str) -> int:
    try:
        return int(fs.du(path, total=True))
    except (FileNotFoundError, NotImplementedError):
        return 0


def _mtime(fs: Any, info: dict[str, Any]) -> float:
    """A folder's modification time, newest of the folder and what it holds (seconds
    since the epoch; 0 when the filesystem does not say)."""
    def stamp(item: dict[str, Any]) -> float:
        for name in ("mtime", "LastModified", "last_modified", "created", "updated"):
            value = item.get(name)
            if value is None:
                continue
            if hasattr(value, "timestamp"):
                return float(value.timestamp())
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
        return 0.0

    newest = stamp(info)
    try:
        for child in fs.find(info["name"], detail=True).values():
            newest = max(newest, stamp(child))
    except (FileNotFoundError, NotImplementedError):
        pass
    return newest


def _remove(fs: Any, path: str) -> None:
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
