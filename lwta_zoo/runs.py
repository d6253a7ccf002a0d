"""A training run's folder: one run in it, one process at a time, and what makes the run that run.

``claim`` is called before a run writes anything. It refuses a folder that holds another run
unless the run is resumed (``--resume``; the checkpoint's identity is then checked against the
run's) or replaced (``--overwrite``, which removes only the files a run writes), and takes a lock
file naming the holder's pid, so that a second process cannot interleave its logs with the
first's. A lock left by a process that no longer runs (killed) is taken over, with a note.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

LOCK = 'train.lock'
# what a training run writes into its folder (lwta_zoo.train); --overwrite removes these and nothing else
RUN_FILES = ('recipe.yaml', 'metrics.jsonl', 'checkpoint.safetensors', 'final_metrics.json', 'export', 'tensorboard')


class RunFolderError(ValueError):
    """A run folder that this run may not use: the message says why and what to do."""


def data_fingerprint(*datasets: Any) -> str:
    """sha256 of the images and labels of ``datasets`` (objects with ``images`` and ``labels`` tensors)."""
    h = hashlib.sha256()
    for ds in datasets:
        for t in (ds.images, ds.labels):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.contiguous().numpy().data)
    return h.hexdigest()


def run_identity(data_name: str, train_set: Any, test_set: Any) -> Dict[str, Any]:
    """What makes a run that run beside its recipe (which checkpoints keep whole and compare key by key):
    the library version and the data it sees (name, sizes, a hash of the images and labels)."""
    from . import __version__

    return {'lwta_zoo': __version__, 'data': {'name': data_name, 'train_n': len(train_set), 'test_n': len(test_set),
                                              'sha256': data_fingerprint(train_set, test_set)}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """``folder/<name>`` (``train.lock``; ``lwta-zoo eval`` takes ``eval.lock``) holding ``{"pid", "host"}`` of
    the process that writes into ``folder``; ``command`` names that process's subcommand in messages."""

    def __init__(self, folder: Path, name: str = LOCK, command: str = 'train'):
        self.path = Path(folder) / name
        self.command = command
        self.held = False

    def holder(self) -> Optional[Dict[str, Any]]:
        """The lock's holder if one still runs (on another host: assumed to), else None."""
        try:
            info = json.loads(self.path.read_text())
            pid, host = int(info['pid']), str(info['host'])
        except (OSError, ValueError, KeyError, TypeError):  # none, or not a lock this module wrote
            return None
        if host == socket.gethostname() and not _alive(pid):
            return None
        return {'pid': pid, 'host': host}

    def ours(self, holder: Optional[Dict[str, Any]]) -> bool:
        """Whether ``holder`` is this process (a second Trainer of one process on one folder is the caller's
        business: the lock keeps other processes out)."""
        return holder is not None and holder == {'pid': os.getpid(), 'host': socket.gethostname()}

    def check(self) -> None:
        """Refuse if another live process holds the lock."""
        holder = self.holder()
        if holder is not None and not self.ours(holder):
            raise RunFolderError(
                f'{self.path.parent} is in use by process {holder["pid"]} on {holder["host"]} (lock file '
                f'{self.path}); wait for it to end or stop it (a lock of a process that ended is taken over; '
                f'delete the lock file if that process is not running lwta-zoo {self.command} here)')

    def acquire(self) -> None:
        """Take the lock: its file appears whole or not at all (written aside, then hard-linked into place)."""
        me = self.path.with_name(f'{self.path.name}.{os.getpid()}')
        me.write_text(json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}))
        try:
            self._take(me)
        finally:
            me.unlink(missing_ok=True)

    def _take(self, me: Path) -> None:
        for _ in range(2):
            try:
                os.link(me, self.path)  # fails if the lock exists
            except FileExistsError:
                self.check()
                if self.ours(self.holder()):
                    return  # held by this process already; whoever took it releases it
                stale = self.path.read_text(errors='replace').strip() if self.path.exists() else ''
                print(f'lwta-zoo {self.command}: taking over the stale lock {self.path} ({stale or "empty"}): '
                      'its process no longer runs', file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            self.held = True
            return
        self.check()
        raise RunFolderError(f'could not take the lock {self.path}: another process took it meanwhile')

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def run_files(folder: Path) -> List[str]:
    """The files of a training run that ``folder`` holds."""
    return [name for name in RUN_FILES if (Path(folder) / name).exists()]


def claim(folder: Path, checkpoint: str, *, resume: bool = False, overwrite: bool = False) -> RunLock:
    """Check that a run may train into ``folder``, then lock it (see the module docstring).

    Nothing on disk changes when this refuses. The caller releases the returned lock when the run ends.
    """
    folder = Path(folder)
    if resume and overwrite:
        raise RunFolderError('--resume and --overwrite contradict each other: choose one')
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f'output {folder} exists and is not a folder')
    RunLock(folder).check()
    if resume and not (folder / checkpoint).is_file():
        raise RunFolderError(f'--resume: no checkpoint at {folder / checkpoint}')
    existing = run_files(folder)
    if existing and not (resume or overwrite):
        raise RunFolderError(f'{folder} holds a training run ({", ".join(existing)}); continue it with --resume, '
                             'replace it with --overwrite, or choose another --output')
    return take(RunLock(folder), existing if overwrite else [])


def take(lock: RunLock, replaced: List[str]) -> RunLock:
    """Create the lock's folder if need be (removed again if the lock cannot be had), take the lock, then remove
    the ``replaced`` files and folders of the run it replaces (``--overwrite``)."""
    folder = lock.path.parent
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire()
    except BaseException:
        if created:
            folder.rmdir()
        raise
    for name in replaced:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return lock


def check_identity(saved: Optional[Dict[str, Any]], now: Dict[str, Any], where: Path) -> None:
    """Refuse to resume a checkpoint whose run identity differs from this run's, naming the difference.
    A checkpoint written before identities were recorded has none and is not checked here."""
    from .checkpoint import differences, flatten

    if saved is None:
        return
    diff = differences(saved, now)
    if diff:
        a, b = flatten(saved), flatten(now)
        raise RunFolderError(f'--resume: {where} belongs to another run: '
                             + '; '.join(f'{k} is {b.get(k)!r} now, {a.get(k)!r} in the checkpoint' for k in diff))
