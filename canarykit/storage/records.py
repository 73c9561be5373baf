"""Release records in object storage: a plan's `reports:` may be `s3://`, `gs://` or `az://`.

A runner still works in a local folder (papermill, the audit log's file lock and the report
need real files); the URL holds the record. Before a step the release folder is pulled, and
the store is proven writable before anything in the cluster changes; after each phase every
new or changed file is pushed. This is what a CronJob needs: each run is a fresh pod whose
scratch folder is gone when it ends.

A local copy remembers what it last exchanged with the store (`.canarykit-sync.json`: each
file's local identity and remote ETag), so a pull keeps a file this machine changed but could
not push (it is pushed next) and fetches one another runner changed; a file changed on both
sides is refused, not merged. Credentials come from the environment (AWS_*, the
GOOGLE_APPLICATION_CREDENTIALS file, AZURE_STORAGE_*), never from the URL. fsspec and its
backend are imported only when a URL is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from canarykit.core.errors import BadInput, CanaryKitError
from canarykit.core.files import write_atomically
from canarykit.core.urls import scrub, without_userinfo

# scheme -> (fsspec backend package, pip extra that installs it)
BACKENDS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
            "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure")}
SYNC_FILE = ".canarykit-sync.json"
PROBE = ".canarykit-probe"
SCRATCH_ENV = "CANARYKIT_SCRATCH_DIR"  # where local copies of remote records live
MAX_FILE = 256 * 1024 * 1024  # a release file larger than this is not fetched
MAX_FILES = 10_000
PUSH_ATTEMPTS = 3  # a failed upload is tried again after 1 s and 3 s
# Fail in seconds, not minutes, when the store cannot be reached (botocore's own defaults
# wait 60 s and retry); only S3 takes these.
S3_OPTIONS = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 30,
                                "retries": {"max_attempts": 2, "mode": "standard"}}}


class StorageError(CanaryKitError):
    """The record store failed after the cluster changed: the local copy is kept."""


def is_url(text: str) -> bool:
    """A URL of a record store (anything else is a local folder)."""
    return "://" in str(text)


def check_url(field: str, url: str, *, installed: bool = True) -> str:
    """`url` if canarykit can store records there (`installed`: with the backend this
    machine has); BadInput naming `field` otherwise."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in BACKENDS:
        raise BadInput(field, without_userinfo(url), "must be a folder or an s3://, gs:// or "
                       "az:// URL (" + ", ".join(sorted(BACKENDS)) + ")")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise BadInput(field, without_userinfo(url), "must not carry credentials, a query or "
                       "a fragment: credentials come from the environment (AWS_*, "
                       "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*)")
    if not parts.netloc:
        raise BadInput(field, url, "must name a bucket or container: SCHEME://BUCKET/PREFIX")
    for part in PurePosixPath(parts.path).parts[1:]:
        if part in (".", ".."):
            raise BadInput(field, url, "must not contain . or .. folders")
    package, extra = BACKENDS[scheme]
    if installed and importlib.util.find_spec(package) is None:
        raise BadInput(field, url, f"needs the {package} package: "
                       f"pip install 'canarykit[{extra}]'")
    return url


def join(url: str, *names: str) -> str:
    return "/".join([url.rstrip("/"), *names])


def scratch_root(url: str) -> Path:
    """The local folder holding copies of the records under `url`: one per URL, kept between
    runs on one machine (a laptop's cron), in the pod's scratch volume on a cluster."""
    base = os.environ.get(SCRATCH_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "canarykit",
        "records")
    return Path(base) / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec  # imported here: only a remote record needs it

    check_url("reports", url)
    parts = urlsplit(url)
    protocol = parts.scheme.lower()
    options = S3_OPTIONS if protocol == "s3" else {}
    fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
    if protocol == "s3":
        fs.retries = 2  # s3fs's own retries come on top of botocore's: the runner retries
    return fs, (parts.netloc + parts.path).rstrip("/")


def reason(exc: BaseException) -> str:
    """What went wrong, in one line without a credential: the store's own words."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return scrub(f"{type(exc).__name__}: {text}"[:300])


@contextlib.contextmanager
def _refused(url: str, problem: str) -> Iterator[None]:
    """The store's own failures as one BadInput naming `reports` and the URL."""
    try:
        yield
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput("reports", url, f"{problem}: {reason(exc)}") from None


def probe(url: str) -> None:
    """Prove the store takes writes under `url` (write, then delete, a small object), before
    a step changes anything: BadInput when it does not."""
    with _refused(url, "cannot be written, so nothing was changed"):
        fs, root = _filesystem(url)
        path = f"{root}/{PROBE}-{os.getpid()}"
        fs.pipe_file(path, b"canarykit write probe\n")
        fs.rm_file(path)


def exists(url: str) -> bool:
    """Whether anything is stored under `url` (a release folder of that name, say)."""
    with _refused(url, "cannot be read"):
        fs, root = _filesystem(url)
        return bool(fs.exists(root))


# ---------------------------------------------------------------- pulling and pushing


def _identity(path: Path) -> list[int]:
    """What tells a local file's versions apart (an atomic rewrite gets a new inode)."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ino]


def _token(info: dict[str, Any]) -> str:
    """What tells a remote object's versions apart."""
    for key in ("ETag", "etag", "md5_hash", "generation", "LastModified", "last_modified",
                "mtime"):
        if info.get(key):
            return f"{info.get('size')}:{info[key]}"
    return str(info.get("size"))


def _sync_state(folder: Path) -> dict[str, Any]:
    """The sync file of a local copy ({} when there is none or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / SYNC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_sync(folder: Path, url: str) -> dict[str, Any]:
    """What the copy last exchanged with `url`, file by file."""
    data = _sync_state(folder)
    files = data.get("files") if data.get("url") == url else None
    return files if isinstance(files, dict) else {}


def origin(folder: Path) -> str:
    """The URL a local copy was pulled from ("" for a folder that is not one)."""
    url = _sync_state(folder).get("url")
    return url if isinstance(url, str) and is_url(url) else ""


def _write_sync(folder: Path, url: str, files: dict[str, Any]) -> None:
    write_atomically(folder / SYNC_FILE, json.dumps({"url": url, "files": files}) + "\n",
                     0o600)


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and not name.startswith(".") and \
        not name.endswith(".lock")


def _remote_files(fs: Any, root: str) -> dict[str, dict[str, Any]]:
    try:
        listing = fs.ls(root, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    files = {}
    for info in listing:
        name = str(info.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
        if info.get("type") == "file" and _plain(name):
            files[name] = info
    if len(files) > MAX_FILES:
        raise BadInput("reports", root, f"holds more than {MAX_FILES:,} files: not a release")
    return files


def pull(url: str, folder: Path) -> list[str]:
    """Bring `folder` up to date with the release folder at `url`; the names fetched.
    BadInput (nothing changed yet) when the store cannot be read or a file changed on both
    sides."""
    folder.mkdir(parents=True, exist_ok=True)
    synced = _read_sync(folder, url)
    fetched = []
    try:
        with _refused(url, "cannot be read, so nothing was changed"):
            fs, root = _filesystem(url)
            remote = sorted(_remote_files(fs, root).items())
        for name, info in remote:
            token, local, known = _token(info), folder / name, synced.get(name)
            if known and known.get("remote") == token:
                continue  # unchanged there; a local change is pushed next
            if known and local.exists() and _identity(local) != known.get("local"):
                raise BadInput("reports", url, f"{name} changed both here ({local}) and in "
                               "the store since they were last in step: reconcile by hand")
            if int(info.get("size") or 0) > MAX_FILE:
                raise BadInput("reports", join(url, name),
                               f"is larger than {MAX_FILE // 2**20} MiB: not a release file")
            with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{name}.",
                                             delete=False) as handle:
                temporary = Path(handle.name)
            try:
                with _refused(url, "cannot be read, so nothing was changed"):
                    fs.get_file(f"{root}/{name}", str(temporary))
                    os.replace(temporary, local)
            finally:
                temporary.unlink(missing_ok=True)
            synced[name] = {"local": _identity(local), "remote": token}
            fetched.append(name)
    finally:
        if fetched:
            _write_sync(folder, url, synced)
    return fetched


def push(folder: Path, url: str) -> list[str]:
    """Upload every file of `folder` that changed since it was last in step with `url`; the
    names sent. StorageError (the local copy kept, pushed by the next step here) when the
    store still refuses after PUSH_ATTEMPTS tries."""
    synced = _read_sync(folder, url)
    changed = [path for path in sorted(folder.iterdir())
               if _plain(path.name) and path.is_file() and not path.is_symlink()
               and synced.get(path.name, {}).get("local") != _identity(path)]
    if not changed:
        return []
    for attempt in range(PUSH_ATTEMPTS):
        try:
            fs, root = _filesystem(url)
            for path in changed:
                if synced.get(path.name, {}).get("local") == _identity(path):
                    continue  # sent by an earlier attempt
                identity = _identity(path)
                fs.put_file(str(path), f"{root}/{path.name}")
                info = fs.info(f"{root}/{path.name}", refresh=True)
                synced[path.name] = {"local": identity, "remote": _token(info)}
            return [path.name for path in changed]
        except BadInput:
            raise
        except Exception as exc:
            problem = reason(exc)
            if attempt + 1 < PUSH_ATTEMPTS:
                time.sleep(2 * attempt + 1)
        finally:
            _write_sync(folder, url, synced)
    raise StorageError(f"reports {url}: the release record could not be stored ({problem}); "
                       f"the local copy in {folder} is kept and pushed by the next step run "
                       "there")


def newest_release(url: str) -> str:
    """The URL of the release folder under `url` (reports/SERVICE) changed last."""
    with _refused(url, "cannot be read"):
        fs, root = _filesystem(url)
        folders = [info["name"].rstrip("/") for info in fs.ls(root, detail=True, refresh=True)
                   if info.get("type") == "directory"]
        found = []
        for name in folders:
            with contextlib.suppress(FileNotFoundError):
                info = fs.info(f"{name}/release.json", refresh=True)
                found.append((str(info.get("LastModified") or info.get("mtime") or ""), name))
    if not found:
        raise BadInput("release_folder", "", f"no release folder under {url}; give one")
    scheme = urlsplit(url).scheme
    return f"{scheme}://{max(found)[1]}"


def fetch(url: str) -> Path:
    """The release folder at `url`, pulled into its local copy (kept between calls, so a
    second look fetches only what changed) for reading; push() sends back what is added."""
    check_url("release_folder", url)
    folder = scratch_root(url) / url.rstrip("/").rsplit("/", 1)[-1]
    pull(url, folder)
    if not any(_plain(path.name) for path in folder.iterdir()):
        raise BadInput("release_folder", url, "is not a release folder: it holds no files")
    return folder
