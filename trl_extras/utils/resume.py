"""One resume protocol for every piece of saved state that a later run trusts (PPO checkpoints, CEM rounds, pipeline
stages, ``iterate`` steps, reward-ensemble members).

* **Complete by content.** A saved directory is complete exactly when its ``resume_manifest.json`` exists and every
  file it lists has the sha256 it had when saved. The manifest is written last (atomically, after an fsync of the
  tree), so a process killed while saving leaves no manifest, and a file corrupted later -- even with its size
  unchanged -- fails the check. Hashing costs one read of every file at save time (a 135M-parameter checkpoint:
  ~0.5 s) and one more when a resume verifies it; nothing is hashed per step.
* **Settings.** The manifest stores the fingerprint of what shapes the result (``utils.fingerprint``: config
  fields, rewards and models by content); a resume with another fingerprint is refused naming the fields, unless
  they are listed in the one override, ``resume_allow_changes``. Settings that the saved state cannot follow
  (world size, batch layout, schedule length) are refused even then.
* **Lineage.** Every run gets a run id; ``lineage.json`` in the output directory names the current run and the
  chain of checkpoints it descends from, and each manifest records its run. ``resume_from_checkpoint=True`` picks
  the newest complete checkpoint on that chain, never a later checkpoint of a branch that was abandoned.
* **One writer.** :class:`OutputDirLock`: a second process on the same output directory is refused while the first
  runs; a lock left by a killed process (its pid is gone, or was reused: the start time differs) is taken over.
* **Fail before work.** :func:`check_writable` writes a probe file before any training; :func:`saving` turns an
  I/O failure while saving (a full disk: ``RuntimeError: [enforce fail at inline_container.cc...]``) into an error
  naming the directory, the file and the disk's free space, and removes the unfinished directory, so the previous
  complete one stays the one a resume uses.
* **Stopping.** :class:`StopSignals`: SIGTERM / SIGINT ask the run to stop at its next safe point (after an
  optimizer step, with a final complete checkpoint; after a CEM round); a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

from .atomic import atomic_write_json, fsync_tree

logger = logging.getLogger(__name__)

__all__ = [
    "LINEAGE_FILE",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "RESUME_ALLOW_CHANGES_HELP",
    "normalize_allow_changes",
    "exit_with_parent",
    "OutputDirLock",
    "StopSignals",
    "check_writable",
    "invalidate",
    "lineage_chain",
    "read_manifest",
    "saving",
    "select_checkpoint",
    "sha256_file",
    "start_lineage",
    "verify",
    "write_manifest",
]

RESUME_ALLOW_CHANGES_HELP = (
    "Resume override: settings whose change since the saved state (checkpoint, round, stage) is accepted, e.g. "
    "['kl_coef'] or ['all']. Without it a resume with any changed setting that shapes the result is refused, naming "
    "the fields. Accepted fields take their new value from here on (PPO: a changed kl_coef restarts β at the new "
    "value). The world size, batch layout, schedule length and seed cannot be accepted (the saved optimizer, "
    "schedule, data position and RNG states only fit the old values)."
)


def normalize_allow_changes(value, name: str = "resume_allow_changes") -> list[str]:
    """``resume_allow_changes`` as a list of field names (a single string is one field); a clear error otherwise."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a list of setting names (or ['all']), got {value!r}.")
    return list(value)


MANIFEST_FILE = "resume_manifest.json"
LOCK_FILE = ".trl_extras.lock"
LINEAGE_FILE = "lineage.json"
MANIFEST_FORMAT = "trl_extras.resume"
# files that are not part of the saved state (the manifest itself, temporary files of an atomic write, locks)
_NOT_STATE = (MANIFEST_FILE, LOCK_FILE)


def _is_state_file(name: str) -> bool:
    return name not in _NOT_STATE and ".tmp-" not in name and not name.endswith(".lock")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _state_files(directory: Path, skip_dirs: tuple = ()) -> list[str]:
    out = []
    for root, dirs, files in os.walk(directory):
        rel_root = os.path.relpath(root, directory)
        dirs[:] = sorted(d for d in dirs if os.path.normpath(os.path.join(rel_root, d)) not in skip_dirs)
        out.extend(os.path.normpath(os.path.join(rel_root, f)) for f in sorted(files) if _is_state_file(f))
    return out


def invalidate(directory: str | os.PathLike) -> None:
    """Remove ``directory``'s manifest before rewriting anything in it: from now until the new manifest, it is
    incomplete (a crash in between never leaves old and new files under an old manifest)."""
    (Path(directory) / MANIFEST_FILE).unlink(missing_ok=True)


def write_manifest(
    directory: str | os.PathLike,
    kind: str,
    fingerprint: dict | None = None,
    step: int | None = None,
    lineage: dict | None = None,
    extra: dict | None = None,
    skip_dirs: tuple = (),
) -> dict:
    """Hash every file under ``directory`` (sha256) and write the manifest LAST: the directory is then complete and
    verified (``"verified": true`` -- rotation may rely on it: this is a checkpoint whose every byte was hashed after
    it was fully written). ``kind`` names the writer (``"ppo_checkpoint"``, ``"cem_round"``...); ``extra`` is the
    writer's own small state (e.g. PPO's β). ``skip_dirs``: sub-directories (relative) that are not part of it."""
    directory = Path(directory)
    fsync_tree(directory)
    files = {}
    for rel in _state_files(directory, skip_dirs):
        full = directory / rel
        files[rel] = {"sha256": sha256_file(full), "size": full.stat().st_size}
    from .fingerprint import fingerprint_hash

    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "kind": kind,
        "verified": True,
        "step": step,
        "written_at": time.time(),
        "host": socket.gethostname(),
        "fingerprint": fingerprint,
        "fingerprint_hash": fingerprint_hash(fingerprint) if fingerprint is not None else None,
        "lineage": lineage,
        "extra": extra or {},
        "files": files,
    }
    atomic_write_json(directory / MANIFEST_FILE, manifest, indent=None)
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The manifest of ``directory`` (None when there is none or it is unreadable)."""
    path = Path(directory) / MANIFEST_FILE
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def verify(directory: str | os.PathLike, kind: str | None = None, hashes: bool = True) -> str | None:
    """Why ``directory`` is not complete (None when it is): no manifest (the save did not finish), another kind of
    directory, or a listed file missing, of another size or (``hashes``) another sha256."""
    directory = Path(directory)
    if not directory.is_dir():
        return "no such directory"
    if not (directory / MANIFEST_FILE).is_file():
        return f"no {MANIFEST_FILE} (written last: the save did not finish)"
    manifest = read_manifest(directory)
    if manifest is None:
        return f"{MANIFEST_FILE} is unreadable"
    if kind is not None and manifest.get("kind") != kind:
        return f"it was written as a {manifest.get('kind')!r}, not a {kind!r}"
    for rel, meta in manifest.get("files", {}).items():
        full = directory / rel
        if not full.is_file():
            return f"{rel} is missing"
        size = full.stat().st_size
        if size != meta["size"]:
            return f"{rel} is truncated or changed ({size} bytes, {meta['size']} when saved)"
        if hashes and sha256_file(full) != meta["sha256"]:
            return f"{rel} is corrupted (its sha256 differs from the one saved with it)"
    return None


# ---------------------------------------------------------------------------------------------------------------
# Lineage: which run the output directory continues
# ---------------------------------------------------------------------------------------------------------------
def start_lineage(output_dir: str | os.PathLike, parent: str | os.PathLike | None, write: bool = True) -> dict:
    """Start a new run in ``output_dir``: a new run id whose chain is the parent checkpoint's chain (cut at the
    parent's step) or empty for a fresh run; written to ``lineage.json`` (when ``write``: the main process).
    Returns ``{"run_id", "chain": [{"run_id", "upto"}, ...]}`` -- the current run first, ``upto`` None."""
    run_id = uuid.uuid4().hex[:12]
    chain = [{"run_id": run_id, "upto": None}]
    if parent is not None:
        manifest = read_manifest(parent) or {}
        step = manifest.get("step")
        parent_chain = (manifest.get("lineage") or {}).get("chain") or []
        if parent_chain:
            head, *rest = parent_chain
            chain.append({"run_id": head["run_id"], "upto": step})
            for link in rest:
                upto = link["upto"] if step is None or link["upto"] is None else min(link["upto"], step)
                chain.append({**link, "upto": upto})
        else:  # a checkpoint written before lineages existed: the chain names it
            chain.append({"run_id": None, "upto": step, "checkpoint": os.path.basename(os.path.normpath(str(parent)))})
    lineage = {"run_id": run_id, "chain": chain, "parent": None if parent is None else os.path.basename(str(parent))}
    if write:
        atomic_write_json(Path(output_dir) / LINEAGE_FILE, lineage)
    return lineage


def lineage_chain(output_dir: str | os.PathLike) -> list | None:
    """The current run's chain from ``lineage.json`` (None for a directory written before lineages existed)."""
    try:
        with open(Path(output_dir) / LINEAGE_FILE, encoding="utf-8") as f:
            return json.load(f)["chain"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None


def select_checkpoint(output_dir: str | os.PathLike, kind: str, warn=None, problem=None) -> str:
    """The checkpoint ``resume_from_checkpoint=True`` continues: the newest COMPLETE ``checkpoint-N`` written by
    the current run, else by the run it branched from (up to the branch step), and so on up the chain in
    ``lineage.json``; checkpoints of abandoned branches are never picked. Incomplete ones are skipped, each with
    ``warn(message)``. A directory without ``lineage.json`` (older runs): the newest complete checkpoint by step.
    ``problem(path)``: the writer's own completeness check (default :func:`verify` of ``kind``)."""
    import re

    output_dir = Path(output_dir)
    pattern = re.compile(r"^checkpoint-(\d+)$")
    found = sorted(
        ((int(m.group(1)), output_dir / name) for name in (os.listdir(output_dir) if output_dir.is_dir() else [])
         if (m := pattern.match(name)) and (output_dir / name).is_dir()),
        reverse=True,
    )  # fmt: skip
    chain = lineage_chain(output_dir)
    problems = {}

    def complete(path):
        if path not in problems:
            problems[path] = problem(str(path)) if problem is not None else verify(path, kind)
            if problems[path] is not None and warn is not None:
                warn(f"Skipping incomplete checkpoint {path}: {problems[path]}. Resuming from an older one.")
        return problems[path] is None

    if chain:
        for link in chain:
            for step, path in found:
                if link["upto"] is not None and step > link["upto"]:
                    continue
                manifest = read_manifest(path)
                if manifest is None:  # unfinished (killed while saving): belongs to no run yet; say it is skipped
                    complete(path)
                    continue
                if link["run_id"] is None:
                    mine = path.name == link.get("checkpoint")
                else:
                    mine = (manifest.get("lineage") or {}).get("run_id") == link["run_id"]
                if mine and complete(path):
                    return str(path)
        raise ValueError(
            f"No complete checkpoint on the current run's lineage in {output_dir} (lineage.json: run "
            f"{chain[0]['run_id']}); {len(found)} checkpoint(s) there belong to other runs or are incomplete. "
            "Pass resume_from_checkpoint=<path of a checkpoint> to continue a specific one."
        )
    for _, path in found:
        if complete(path):
            return str(path)
    raise ValueError(f"No complete checkpoint in output directory {output_dir} to resume from.")


# ---------------------------------------------------------------------------------------------------------------
# One writer per output directory
# ---------------------------------------------------------------------------------------------------------------
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, from /proc): tells a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputDirLock:
    """An exclusive lock on an output directory for the lifetime of one run (``with OutputDirLock(dir, "PPO"):``).

    The lock file ``.trl_extras.lock`` holds the owner's pid, host, boot id and process start time. A second process
    is refused while the owner runs. A lock whose owner is gone (kill -9, OOM: same host, and the pid is dead or now
    belongs to a process with another start time, or the machine rebooted) is stale and taken over with a warning.
    A lock from another host cannot be checked: the error says which host and how to remove it. Re-entrant within
    one process (a pipeline holds its root while a stage locks its own directory)."""

    _held: dict = {}  # path -> count, this process

    def __init__(self, directory: str | os.PathLike, what: str = "run"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.what = what
        self._key: str | None = None  # set by acquire: the held-count key of this directory

    def _me(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
                "start_time": _start_time(os.getpid()), "what": self.what, "since": time.time()}  # fmt: skip

    def _stale(self, owner: dict) -> str | None:
        """Why ``owner``'s lock is stale (None when its owner may still run)."""
        if owner.get("host") != socket.gethostname():
            return None
        if owner.get("boot_id") and owner.get("boot_id") != _boot_id():
            return "the machine rebooted since"
        pid = owner.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            return f"process {pid} is gone"
        if owner.get("start_time") is not None and _start_time(pid) not in (None, owner["start_time"]):
            return f"pid {pid} now belongs to another process"
        return None

    def acquire(self) -> OutputDirLock:
        key = str(self.path.resolve())
        if OutputDirLock._held.get(key):
            OutputDirLock._held[key] += 1
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        me = self._me()
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text())
                except (OSError, json.JSONDecodeError):
                    owner = {}
                if owner.get("pid") == me["pid"] and owner.get("host") == me["host"] and owner.get("start_time") == me["start_time"]:
                    break  # ours (an earlier object of this process)
                why = self._stale(owner) if owner else "the lock file is unreadable (a writer killed mid-write)"
                if why is None:
                    raise RuntimeError(
                        f"Output directory {self.directory} is in use by another {owner.get('what', 'run')} (pid "
                        f"{owner.get('pid')} on host {owner.get('host')}, since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner.get('since', 0)))}): two writers "
                        "would mix their files. Wait for it to finish, stop it, or use another output_dir. If that "
                        f"process is certainly gone (another host cannot be checked from here), delete {self.path}."
                    ) from None
                logger.warning("Taking over the stale lock %s (%s).", self.path, why)
                import warnings

                warnings.warn(f"Taking over the stale lock {self.path} of pid {owner.get('pid')}: {why}.", stacklevel=3)
                aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
                with contextlib.suppress(OSError):
                    os.replace(self.path, aside)  # atomic: of two processes taking over, one wins the O_EXCL above
                    aside.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
        else:
            raise RuntimeError(f"Could not take the lock {self.path} (other processes keep taking it).")
        OutputDirLock._held[key] = 1
        self._key = key
        return self

    def release(self) -> None:
        key = self._key or str(self.path.resolve())
        count = OutputDirLock._held.get(key, 0)
        if count > 1:
            OutputDirLock._held[key] = count - 1
            return
        OutputDirLock._held.pop(key, None)
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return
        if owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------------------------
# Writability and save errors
# ---------------------------------------------------------------------------------------------------------------
def _disk(path: Path) -> str:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return "unknown disk"
    return f"the disk holding {probe} has {usage.free / 2**30:.2f} GiB free of {usage.total / 2**30:.1f} GiB"


def check_writable(directory: str | os.PathLike, what: str = "output_dir") -> None:
    """Create ``directory`` and write, fsync and remove a probe file in it, before any work: a read-only or missing
    mount fails here, naming the directory, instead of at the first save after hours of training."""
    directory = Path(directory)
    probe = directory / f".trl_extras_write_test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise PermissionError(
            f"{what} {directory} is not writable ({err.strerror or err}); nothing was trained. Fix its permissions "
            f"or free space ({_disk(directory)}), or choose another {what}."
        ) from err
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class SaveError(OSError):
    """Saving state failed (disk full, permissions, I/O): the message names the directory, the file and the disk."""


def _is_io_error(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return True
    text = str(err)
    # torch.save on a full disk: "[enforce fail at inline_container.cc:...] unexpected pos" / "file write failed"
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("inline_container", "file write failed", "No space left", "PytorchStreamWriter")
    )


@contextlib.contextmanager
def saving(directory: str | os.PathLike, what: str = "checkpoint", keep_hint: str = ""):
    """Save into ``directory`` inside this block; an I/O failure (a full disk, a read-only mount, ``torch.save``'s
    bare ``RuntimeError: [enforce fail at inline_container.cc...]``) removes the unfinished ``directory`` and
    raises :class:`SaveError` naming it, the newest file written into it and the disk's free space.
    ``keep_hint`` says what stays usable (e.g. "the previous complete checkpoint is kept")."""
    directory = Path(directory)
    try:
        yield directory
    except BaseException as err:
        if not _is_io_error(err):
            raise
        last = None
        with contextlib.suppress(OSError):
            files = [p for p in directory.rglob("*") if p.is_file()]
            last = max(files, key=lambda p: p.stat().st_mtime_ns).name if files else None
        shutil.rmtree(directory, ignore_errors=True)
        raise SaveError(
            f"Could not write the {what} {directory}" + (f" (while writing {last} or the file after it)" if last else "")
            + f": {err}. {_disk(directory)}. The unfinished {what} was removed. {keep_hint}".rstrip()
        ) from err


# ---------------------------------------------------------------------------------------------------------------
# Stopping at a safe point
# ---------------------------------------------------------------------------------------------------------------
#: The signal the kernel sends a worker when its launcher dies (``exit_with_parent``): its own signal, because it can
#: arrive more than once (after the launcher, each process the worker is re-parented to that exits sends it again)
#: and must never count as the "second signal" that stops at once.
PARENT_EXIT_SIGNAL = getattr(signal, "SIGRTMIN", None) and signal.SIGRTMIN + 2 or getattr(signal, "SIGUSR2", None)


def _signal_name(signum: int) -> str:
    if signum == PARENT_EXIT_SIGNAL:
        return "the launcher's exit"
    return signal.Signals(signum).name


class StopSignals:
    """While active (``with StopSignals() as stop:``), SIGTERM and SIGINT set ``stop.requested`` instead of killing
    the process; the loop checks it at its safe points and ends there (PPO: after the optimizer step, saving a final
    complete checkpoint; CEM: after the round in progress). A second SIGTERM / SIGINT restores the default behaviour
    and re-raises it (stop now: the newest complete checkpoint stays the resume point). The launcher's exit
    (``PARENT_EXIT_SIGNAL``, see :func:`exit_with_parent`) asks for the same safe stop, any number of times. Only the
    main thread can install handlers; elsewhere this is a no-op."""

    SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, PARENT_EXIT_SIGNAL) if s is not None)

    def __init__(self):
        self.requested: str | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        name = _signal_name(signum)
        if self.requested is not None and signum == PARENT_EXIT_SIGNAL:
            return  # already stopping; the launcher's exit is never an "at once"
        if self.requested is not None:  # the second signal: stop now
            logger.warning("second %s: stopping now (the newest complete checkpoint stays the resume point).", name)
            self.restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.requested = name
        logger.warning("%s: stopping at the next safe point (SIGTERM/SIGINT again stops at once).", name)
        from .progress import log_line

        log_line("stop", f"{name}: stopping at the next safe point (SIGTERM/SIGINT again stops at once)")

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self.restore()


def exit_with_parent() -> None:
    """Linux: have the kernel send ``PARENT_EXIT_SIGNAL`` to this process when its parent dies (inside
    :class:`StopSignals`: stop at the next safe point; outside: the process ends). Workers of ``accelerate launch`` /
    torchrun run in their own sessions, so ``kill -9`` of the launcher (or of its process group) used to leave them
    training and writing checkpoints. A no-op where ``prctl`` is unavailable."""
    import ctypes
    import sys

    sig = PARENT_EXIT_SIGNAL
    if not sys.platform.startswith("linux") or sig is None:
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before prctl: act now
        os.kill(os.getpid(), sig)
