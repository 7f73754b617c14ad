"""Real faulty filesystems for the storage fault tests (we run as root; nothing here is simulated in Python).

- ``tmpfs``: ``mount -t tmpfs -o size=...``: a small disk that fills up for real (ENOSPC, SQLITE_FULL);
- ``ext4``: an ext4 image on a loop device mounted with ``errors=remount-ro``; :meth:`SmallDisk.fail_readonly`
  writes to ``/sys/fs/ext4/<loop>/trigger_fs_error``, a genuine ext4 error after which the kernel turns
  the filesystem read-only under the running station (what a failing SD card or disk does). A plain
  ``mount -o remount,ro`` is refused while the station holds its files open for writing, and ``chmod``
  does not stop root, so neither reproduces a disk going read-only under a running process.

A machine where ``mount`` is not allowed fails these tests with the mount error (they do not skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def _run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()} -- the storage fault "
                           "tests need root with mount (tmpfs, loop devices)")
    return r.stdout


class SmallDisk:
    def __init__(self, mountpoint: Path, size_mb: int, kind: str = "tmpfs") -> None:
        assert kind in ("tmpfs", "ext4")
        self.path = mountpoint
        self.size_mb = size_mb
        self.kind = kind
        self.image = mountpoint.with_name(mountpoint.name + ".img")
        self.filler = mountpoint / "filler.bin"
        self.mounted = False

    def mount(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        if self.kind == "tmpfs":
            _run("mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs", str(self.path))
        else:
            if not self.image.exists():
                with open(self.image, "wb") as f:
                    f.truncate(self.size_mb << 20)
                _run(shutil.which("mkfs.ext4") or "mkfs.ext4", "-q", "-F", str(self.image))
            _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.path))
        self.mounted = True
        return self

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_bytes: int) -> None:
        """Write a filler file so that about ``leave_bytes`` stay free."""
        size = max(0, self.free_bytes() - leave_bytes)
        with open(self.filler, "ab") as f:
            chunk = b"\0" * (1 << 16)
            while size > 0:
                try:
                    size -= f.write(chunk[: min(size, len(chunk))])
                except OSError:
                    break
            f.flush()
            os.fsync(f.fileno())

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)

    def device(self) -> str:
        return _run("findmnt", "-n", "-o", "SOURCE", "--target", str(self.path)).strip()

    def fail_readonly(self) -> None:
        """ext4 only: a real filesystem error; the kernel remounts the filesystem read-only."""
        assert self.kind == "ext4"
        dev = os.path.basename(self.device())
        Path(f"/sys/fs/ext4/{dev}/trigger_fs_error").write_text("glad-edge storage fault test\n")

    def repair(self) -> None:
        """ext4 only, unmounted: fsck replays the journal (what an operator does after the error)."""
        r = subprocess.run(["e2fsck", "-fy", str(self.image)], capture_output=True, text=True, timeout=120)
        assert r.returncode in (0, 1, 2), r.stdout + r.stderr  # 1/2: errors corrected

    def unmount(self) -> None:
        if not self.mounted:
            return
        r = subprocess.run(["umount", str(self.path)], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:  # still busy: detach now, freed when the last file closes
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, text=True, timeout=60)
        self.mounted = False
