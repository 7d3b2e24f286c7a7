"""Who may read the data folder: what the server writes is its owner's alone.

Every process of the server (runscp, runmllp, the web process, the django-q2
workers, `manage.py` commands) reads the settings, which call `make_private()`
before anything opens a file:

1. the process umask becomes PACS_UMASK (default 077): from then on every file
   it creates is 0600 and every folder 0700 — the SQLite database and its
   -wal/-shm files (SQLite gives them the database's mode), the quarantine,
   the preview cache, the logs, temporary files, the storage folders;
2. what an earlier version left open (an upgrade: folders 0755, files 0644) is
   closed: the private folders and the database file get the same modes.

One exception, on purpose: what a disc robot reads (publishing's staging
folders and the job files in its hot folder).  The robot software may run as
another user on this machine or read them over a share (Samba), so
`publishing.discs` and `publishing.robots` give those files
`ROBOT_READABLE_FILE` / `ROBOT_READABLE_DIR` explicitly, as before.  For the
default staging folder (`publishing` in the data folder) to stay reachable, a
data folder we create is 0711: others may pass through it to a folder they
know the name of, but not list it, and every private folder in it is 0700.
"""

import os
from pathlib import Path

DEFAULT_UMASK = 0o077
DATA_DIR_MODE = 0o711  # see the module docstring: the robot's way to the staging folder
ROBOT_READABLE_DIR = 0o755
ROBOT_READABLE_FILE = 0o644


def make_private(data_dir: Path, *, umask: int, folders=(), files=()) -> None:
    """Set the umask, create `data_dir` if needed, and close `folders` and
    `files` (and SQLite's -wal/-shm beside each file) that already exist."""
    os.umask(umask)
    if not data_dir.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod((0o777 & ~umask) | DATA_DIR_MODE)
    for folder in folders:
        _chmod(folder, 0o777 & ~umask)
    for file in files:
        for path in (file, file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")):
            _chmod(path, 0o666 & ~umask)


def _chmod(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except FileNotFoundError:
        pass
    except PermissionError:  # not ours (a folder an administrator set up): leave it
        pass
