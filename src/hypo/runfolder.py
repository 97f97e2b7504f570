"""The run folder is the run's own: hypo writes only there, never through a link, and deletes only
what its manifest lists.

``output_dir`` is resolved once (``resolve_paths``: ``~`` and symlinks). Every file and folder a
run writes into it is listed in ``hypo_files.json`` (rewritten atomically after each change).
Removing a previous run (--overwrite_output_dir), pruning checkpoints and clearing staging folders
delete only listed entries. Files are written under a temporary name and renamed into place, so a
symlink under a run file's name is never written through; appends open with O_NOFOLLOW; a listed
path whose folder has become a link is refused rather than followed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from .config import ConfigError

MANIFEST = "hypo_files.json"
FORMAT = 1
CARD = "README.md"
CARD_BESIDE = "MODEL_CARD.md"  # the model card's name when a README.md of the user's is there


class RunFolderError(ConfigError):
    """output_dir holds something hypo must not write through, over or delete."""


def resolve_output_dir(path: str | os.PathLike) -> Path:
    """``~`` expanded, relative paths made absolute and symlinks resolved: the folder itself."""
    return Path(os.path.expanduser(str(path))).resolve()


def resolve_paths(cfg) -> Path:
    """Resolve cfg.output_dir in place (and expand ``~`` in logging_dir / ref_cache_dir); the one
    place this happens, so the checks and the writes see the same folder. Idempotent."""
    cfg.output_dir = str(resolve_output_dir(cfg.output_dir))
    for name in ("logging_dir", "ref_cache_dir"):
        value = getattr(cfg, name, None)
        if value:
            setattr(cfg, name, os.path.expanduser(str(value)))
    return Path(cfg.output_dir)


def _link_text(path: Path) -> str:
    try:
        return f"{path} is a symbolic link (to {os.readlink(path)})"
    except OSError:
        return f"{path} is a symbolic link"


def _check_rel(rel: str, source: str) -> str:
    """A manifest entry: a relative path inside the folder (no '..', not absolute)."""
    parts = PurePosixPath(rel).parts
    if not isinstance(rel, str) or not rel or rel.startswith("/") or ".." in parts or "." in parts:
        raise RunFolderError(f"{source}: entry {str(rel)[:80]!r} is not a path inside the run "
                             "folder; the file was not written by hypo. Remove it (hypo then "
                             "treats the folder as holding files it did not write).")
    return str(PurePosixPath(*parts))


class RunFolder:
    """The files a run wrote into ``root``, as listed in ``root/hypo_files.json``.

    Entries are relative POSIX paths: ``files`` (written by hypo, each with the size and
    modification time it had when hypo wrote it, or null for files hypo appends to or that carry
    their own checksums: a file changed since is somebody else's and stays), ``dirs`` (created by
    hypo, removed only when empty) and ``trees`` (folders hypo created whole: staging folders;
    removed with their contents, links inside unlinked, never followed).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._cache: tuple | None = None  # (stat signature, entries)

    # ---- the manifest ---------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest.is_file() and not self.manifest.is_symlink()

    def entries(self) -> dict:
        """{"files": {path: [size, mtime_ns] or None}, "dirs": set, "trees": set} (empty when
        there is no manifest)."""
        empty = {"files": {}, "dirs": set(), "trees": set()}
        if self.manifest.is_symlink():
            raise RunFolderError(f"{_link_text(self.manifest)}; hypo never reads or writes its "
                                 "manifest through a link. Remove the link.")
        try:
            st = self.manifest.stat()
        except FileNotFoundError:
            self._cache = None
            return empty
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._cache and self._cache[0] == signature:
            return self._cache[1]
        try:
            data = json.loads(self.manifest.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("not a manifest of format 1")
            found = {k: {_check_rel(r, str(self.manifest)) for r in data.get(k, [])}
                     for k in ("dirs", "trees")}
            files = data.get("files", {})
            found["files"] = {_check_rel(r, str(self.manifest)): _signature(sig)
                              for r, sig in (files.items() if isinstance(files, dict) else [])}
        except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as err:
            raise RunFolderError(f"{self.manifest} is not a hypo file manifest ({err}); hypo "
                                 "cannot tell which files there it wrote. Remove the file, or use "
                                 "another output_dir.") from None
        self._cache = (signature, found)
        return found

    def _save(self, entries: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": FORMAT, "files": dict(sorted(entries["files"].items())),
                           "dirs": sorted(entries["dirs"]), "trees": sorted(entries["trees"])},
                          indent=1)
        _atomic_write(self.manifest, text.encode())
        self._cache = None

    def record(self, files=(), dirs=(), trees=(), written=(), appended=()) -> None:
        """Add entries: ``files`` before they exist (so a kill in between leaves nothing unlisted;
        no signature), ``written`` once they are in place (with their signature), ``appended``
        (logs hypo appends to: no signature)."""
        old = self.entries()
        entries = {"files": dict(old["files"]), "dirs": set(old["dirs"]), "trees": set(old["trees"])}
        for rel in files:
            entries["files"].setdefault(_check_rel(str(rel), "record"), None)
        for rel in written:
            entries["files"][_check_rel(str(rel), "record")] = _current(self.root / rel)
        for rel in appended:
            entries["files"][_check_rel(str(rel), "record")] = None
        entries["dirs"].update(_check_rel(str(r), "record") for r in dirs)
        entries["trees"].update(_check_rel(str(r), "record") for r in trees)
        if entries != old or not self.exists():
            self._save(entries)

    def forget(self, rel: str) -> None:
        """Drop ``rel`` and everything under it from the manifest."""
        entries = self.entries()
        kept = {"files": {r: v for r, v in entries["files"].items() if not _under(r, rel)},
                "dirs": {r for r in entries["dirs"] if not _under(r, rel)},
                "trees": {r for r in entries["trees"] if not _under(r, rel)}}
        if kept != entries:
            self._save(kept)

    def owns(self, rel: str) -> bool:
        """Whether hypo wrote root/rel (a listed file not changed since, a listed folder)."""
        entries = self.entries()
        if rel in entries["files"]:
            sig = entries["files"][rel]
            return sig is None or not (self.root / rel).exists() or _current(self.root / rel) == sig
        return rel in entries["dirs"] or any(_under(rel, t) for t in entries["trees"])

    # ---- paths ----------------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        """root/rel, refusing a link among its folders (a write or delete would follow it)."""
        rel = _check_rel(rel, "path")
        current = self.root
        for part in PurePosixPath(rel).parts[:-1]:
            current = current / part
            if current.is_symlink():
                raise RunFolderError(f"{_link_text(current)}; hypo does not write or delete through "
                                     "a link it did not create. Remove the link.")
        return self.root / rel

    def writable(self, rel: str) -> Path:
        """The path to (re)write rel at: not a link, and not somebody else's file."""
        target = self.path(rel)
        if target.is_symlink():
            raise RunFolderError(f"{_link_text(target)}; hypo does not write through a link it did "
                                 "not create. Remove the link (the file it points to is untouched).")
        if target.exists() and not self.owns(rel):
            raise RunFolderError(f"{target} was not written by this run (it is not listed in "
                                 f"{self.manifest}); hypo does not overwrite it. Move it away or "
                                 "choose another output_dir.")
        return target

    def mkdir(self, rel: str) -> Path:
        """Create root/rel and its missing parents (listed as hypo's); links are refused."""
        self.root.mkdir(parents=True, exist_ok=True)
        current, created = self.root, []
        for part in PurePosixPath(_check_rel(rel, "mkdir")).parts:
            current = current / part
            if current.is_symlink():
                raise RunFolderError(f"{_link_text(current)}; hypo does not write through a link it "
                                     "did not create. Remove the link.")
            if not current.is_dir():
                created.append(str(current.relative_to(self.root).as_posix()))
                self.record(dirs=[created[-1]])
                current.mkdir()
        return current

    # ---- writing --------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> Path:
        target = self.writable(rel)
        self.record(files=[rel])
        if str(PurePosixPath(rel).parent) != ".":
            self.mkdir(str(PurePosixPath(rel).parent))
        _atomic_write(target, data)
        self.record(written=[rel])
        return target

    def write_text(self, rel: str, text: str) -> Path:
        return self.write_bytes(rel, text.encode())

    def append(self, rel: str, text: str) -> None:
        """Append to root/rel, never through a link (O_NOFOLLOW)."""
        target = self.writable(rel)
        if self.entries()["files"].get(rel, 0) is not None:
            self.record(appended=[rel])
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "a") as fh:
            fh.write(text)

    @contextlib.contextmanager
    def staging(self, prefix: str):
        """A fresh hidden folder in root (a tree of hypo's); removed afterwards unless it was moved."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{prefix}.staging-", dir=self.root))
        os.chmod(folder, 0o777 & ~_UMASK)  # mkdtemp's 0700 would follow it into checkpoint-N
        rel = folder.name
        self.record(trees=[rel])
        try:
            yield folder
        finally:
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
            self.forget(rel)

    def place(self, staging: Path, into: str = "") -> list[str]:
        """Move every file of ``staging`` into root/into (rename: a link there is replaced, never
        followed). A README.md of somebody else's stays; ours goes beside it as MODEL_CARD.md.
        Every target is checked before anything moves; returns the relative paths placed."""
        moves = []
        for src in sorted(staging.iterdir()):
            if not src.is_file() or src.is_symlink():
                raise RunFolderError(f"{src}: a saved model file that is not a plain file.")
            rel = f"{into}/{src.name}" if into else src.name
            if src.name == CARD and self.path(rel).exists() and not self.owns(rel):
                rel = f"{into}/{CARD_BESIDE}" if into else CARD_BESIDE
                from .progress import console

                console.print(f"{self.root / into / CARD} is not hypo's: the model card goes "
                              f"beside it, as {CARD_BESIDE}.", markup=False, highlight=False)
            moves.append((src, rel, self.writable(rel)))
        if into:
            self.mkdir(into)
        self.record(files=[rel for _, rel, _ in moves])
        for src, _, target in moves:
            os.replace(src, target)
        _fsync_dir(self.root / into)
        self.record(written=[rel for _, rel, _ in moves])
        return [rel for _, rel, _ in moves]

    # ---- removing -------------------------------------------------------------------------------
    def remove(self, rel: str = "") -> list[str]:
        """Delete the listed entries at or under ``rel`` ("" = all, the manifest included):
        files unlinked, trees removed, listed folders removed once empty. Never follows a link.
        Returns the relative paths removed."""
        entries = self.entries()
        removed = []
        for key in ("files", "trees"):
            for entry in sorted(entries[key], reverse=True):
                if rel and not _under(entry, rel):
                    continue
                try:
                    path = self.path(entry)
                except RunFolderError:
                    continue  # a folder on its way became a link: leave it, follow nothing
                if key == "files" and not self.owns(entry):
                    continue  # changed since hypo wrote it: somebody else's now
                if path.is_symlink() or path.is_file():
                    path.unlink()
                elif key == "trees" and path.is_dir():
                    shutil.rmtree(path)
                else:
                    continue
                removed.append(entry)
        for entry in sorted(entries["dirs"], key=lambda r: -len(PurePosixPath(r).parts)):
            if rel and not _under(entry, rel):
                continue
            with contextlib.suppress(OSError, RunFolderError):
                path = self.path(entry)
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()  # only when empty: files of somebody else's keep it
                    removed.append(entry)
        if rel:
            self.forget(rel)
        else:
            self.manifest.unlink(missing_ok=True)
            self._cache = None
        return removed


def _current(path: Path) -> list[int] | None:
    """[size, mtime_ns] of a file as it is now (None if it is missing)."""
    try:
        st = path.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _signature(value) -> list[int] | None:
    if value is None:
        return None
    if (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)):
        return value
    raise ValueError(f"file signature {str(value)[:40]!r} is not [size, mtime_ns]")


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(target: Path, data: bytes) -> None:
    """data into target via a fresh temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; restored at once (module import time)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
