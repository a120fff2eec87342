"""Download, verify and safely extract the Kermany pediatric chest X-ray archive.

Source: Kermany, Zhang & Goldbaum, Mendeley Data, doi:10.17632/rscbjbr9sj (CC BY 4.0).
"""

from __future__ import annotations

import http.client
import re
import shutil
import stat
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from pneumolab.errors import FetchError
from pneumolab.files import sha256_of

DEFAULT_URL = "https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded"
ARCHIVE_NAME = "ChestXRay2017.zip"
MANUAL_INSTRUCTIONS = (
    "To get the archive by hand: open https://data.mendeley.com/datasets/rscbjbr9sj/2 in a "
    f"browser, download {ARCHIVE_NAME} (doi:10.17632/rscbjbr9sj, CC BY 4.0), then run "
    f"`pneumolab data fetch --out DATA_ROOT --from path/to/{ARCHIVE_NAME}`."
)
_CHUNK = 256 * 1024
_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


def _unreachable(url: str, problem: object) -> FetchError:
    """A download failure that the user can work around by fetching the archive by hand."""
    return FetchError(f"Could not download {url}: {problem}. {MANUAL_INSTRUCTIONS}")


def _total_size(response: http.client.HTTPResponse, resumed: bool) -> int | None:
    """Full archive size announced by the server (Content-Range total or Content-Length)."""
    if resumed:
        match = re.fullmatch(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
        return int(match.group(1)) if match else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def sha256_digest(text: str) -> str:
    """An expected SHA-256 as 64 lowercase hex digits (spaces and a ``sha256:`` prefix, as
    checksum files and registries write it, dropped); FetchError for anything else, before a
    download that a wrong digest would have deleted."""
    digest = text.strip().lower().removeprefix("sha256:").strip()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise FetchError(f"--sha256 {text!r}: not a SHA-256 digest (64 hexadecimal digits)")
    return digest


def _check_sha256(path: Path, expected: str, *, remove: bool) -> None:
    """Raise FetchError (deleting ``path`` if ``remove``) when its SHA-256 differs from expected."""
    actual = sha256_of(path)
    if actual != expected.lower():
        if remove:
            path.unlink()
        deleted = "; the file was deleted" if remove else ""
        raise FetchError(f"{path}: sha256 mismatch: expected {expected}, got {actual}{deleted}")


def download(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download url to dest, resuming a partial `dest.with_suffix(dest.suffix + '.part')` with an
    HTTP Range request; verify size/sha256; atomically rename .part to dest."""
    sha256 = sha256_digest(sha256) if sha256 else None
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise FetchError(
            f"{url}: not a download address (it needs http://, https:// or file://); "
            "for a zip already on disk use `pneumolab data fetch --from FILE.zip`"
        )
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "pneumolab-fetch"} | ({"Range": f"bytes={offset}-"} if offset else {})
    bar = Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = offset > 0 and response.status == 206
            offset = offset if resumed else 0
            total = _total_size(response, resumed)
            first = response.read(_CHUNK)
            kind = response.headers.get_content_type()
            if kind == "text/html" or not (resumed or first.startswith(b"PK")):
                problem = f"the server sent {kind} content instead of the zip archive"
                raise _unreachable(url, problem + " (bot protection?)")
            with part.open("ab" if resumed else "wb") as fh, bar:
                task = bar.add_task(dest.name, total=total, completed=offset)
                chunk = first
                while chunk:
                    fh.write(chunk)
                    bar.advance(task, len(chunk))
                    chunk = response.read(_CHUNK)
    except urllib.error.HTTPError as exc:
        exc.close()  # release the connection held by the error response
        if exc.code == 416 and offset:  # the partial file is already at or past the end
            part.unlink()
            return download(
                url,
                dest,
                expected_size=expected_size,
                sha256=sha256,
                timeout=timeout,
                progress=progress,
            )
        hint = " (the site may be blocking scripted downloads)" if exc.code in (403, 429) else ""
        raise _unreachable(url, f"the server answered HTTP {exc.code} {exc.reason}{hint}") from exc
    except _NETWORK_ERRORS as exc:
        raise _unreachable(url, getattr(exc, "reason", None) or exc) from exc
    except OSError as exc:
        raise FetchError(f"Could not write {part}: {exc}") from exc
    size = part.stat().st_size
    for want in (total, expected_size):
        if want is not None and size != want:
            if size > want:
                part.unlink()
            hint = "run again to resume" if size < want else "it was deleted, run again"
            raise FetchError(f"{url}: {part} has {size} bytes but should have {want}; {hint}")
    if sha256:
        _check_sha256(part, sha256, remove=True)
    part.replace(dest)
    return dest


class DamagedArchive(FetchError):
    """The archive cannot be extracted: damaged, encrypted or compressed in an unknown way."""


def _is_junk(name: str) -> bool:
    """macOS metadata that ships inside many zip archives."""
    path = PurePosixPath(name)
    return path.parts[:1] == ("__MACOSX",) or path.name.startswith("._") or path.name == ".DS_Store"


def _check_entry(zip_path: Path, info: zipfile.ZipInfo, base: Path) -> None:
    """Raise FetchError for an entry that is a symlink or would be written outside ``base``."""
    name = info.filename
    windows = PureWindowsPath(name)  # splits on both separators; anchor catches /, \ and C:
    target = base / name
    if windows.anchor or ".." in windows.parts:
        raise FetchError(f"{zip_path}: unsafe entry {name!r} would be extracted outside {base}")
    if not target.resolve().is_relative_to(base):  # the archive is fine: a link in --out is not
        inside = [p for p in reversed(target.parents) if p.is_relative_to(base) and p != base]
        link = next((p for p in [*inside, target] if p.is_symlink()), base)
        raise FetchError(
            f"{link}: a link out of {base}, which extracting {name!r} would write through; "
            "give --out a folder without links in it"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise FetchError(f"{zip_path}: entry {name!r} is a symlink; refusing to extract it")


MAX_RATIO = 100
"""The most an entry of over 1 MiB may inflate (its size / its compressed size): JPEGs barely
compress, so a higher ratio is a zip bomb, not an X-ray archive."""


def _check_sizes(zip_path: Path, members: list[zipfile.ZipInfo], base: Path) -> None:
    """FetchError for an archive that would not fit on the disk, an entry that inflates like a
    zip bomb, or two entries of one name (any case: they collide on macOS and Windows; the last
    silently replaced the first). zipfile stops each entry at its declared size, so the
    declared sizes bound what is written."""
    seen: dict[str, str] = {}
    for info in members:
        if info.is_dir():
            continue
        if info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise FetchError(
                f"{zip_path}: entry {info.filename!r} would inflate {info.compress_size:,} "
                f"bytes to {info.file_size:,} (over {MAX_RATIO}x: a zip bomb?); refusing it"
            )
        key = info.filename.lower()
        if key in seen:
            raise FetchError(
                f"{zip_path}: entries {seen[key]!r} and {info.filename!r} name one file; the "
                "archive is not the dataset as published"
            )
        seen[key] = info.filename
    needed, free = sum(info.file_size for info in members), shutil.disk_usage(base).free
    if needed > free:
        raise FetchError(
            f"{zip_path}: extracting needs {needed / 1e9:.1f} GB, {base} has "
            f"{free / 1e9:.1f} GB free"
        )


def _above_train(name: str) -> PurePosixPath | None:
    """The folder above an entry's ``train/`` folder (any case, as dataset scans match it)."""
    parts = PurePosixPath(name).parts
    lowered = [part.lower() for part in parts]
    return PurePosixPath(*parts[: lowered.index("train")]) if "train" in lowered else None


def extract(zip_path: Path, out_dir: Path) -> Path:
    """Safely extract zip_path into out_dir (every entry is checked before anything is written)
    and return the dataset root: the shallowest extracted folder that contains ``train/``."""
    zip_path, out_dir = Path(zip_path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir.resolve()
    created: list[Path] = []  # files this extraction made, removed again if it fails
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [info for info in archive.infolist() if not _is_junk(info.filename)]
            for info in members:
                _check_entry(zip_path, info, base)
            _check_sizes(zip_path, members, base)
            for info in members:
                target = base / info.filename
                if not info.is_dir() and not target.exists():
                    created.append(target)  # before: a damaged entry fails while written
                archive.extract(info, base)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        # a broken central directory or stream, a cut member, encryption, an unknown method
        raise DamagedArchive(
            f"{zip_path} is damaged or not a plain zip archive ({exc}){_removed(created)}"
        ) from exc
    except OSError as exc:
        raise FetchError(
            f"Could not extract {zip_path} into {out_dir}: {exc}{_removed(created)}"
        ) from exc
    roots = {above for info in members if (above := _above_train(info.filename)) is not None}
    found = sorted((out_dir / r for r in roots), key=lambda p: (len(p.parts), str(p)))
    for folder in found:
        if any(p.is_dir() and p.name.lower() == "train" for p in folder.iterdir()):
            return folder
    raise FetchError(f"{zip_path} has no train/ folder; is it the Kermany ChestXRay2017 archive?")


def _removed(created: list[Path]) -> str:
    """Delete the files a failed extraction made (a partial dataset looked whole to every other
    command) and say so; files that were there before are left."""
    for path in created:
        path.unlink(missing_ok=True)
    return f"; the {len(created)} file(s) it had extracted were removed" if created else ""


def fetch(
    out_dir: Path,
    *,
    url: str = DEFAULT_URL,
    from_zip: Path | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Get the archive (download into out_dir/ChestXRay2017.zip unless from_zip is given or it
    is already there), verify, extract into out_dir, return the dataset root."""
    out_dir = Path(out_dir)
    sha256 = sha256_digest(sha256) if sha256 else None
    archive = Path(from_zip) if from_zip is not None else out_dir / ARCHIVE_NAME
    if from_zip is None and not archive.exists():
        download(url, archive, sha256=sha256, progress=progress)
    elif sha256:
        if not archive.is_file():
            raise FetchError(f"{archive}: no such file")
        _check_sha256(archive, sha256, remove=from_zip is None)
    try:
        return extract(archive, out_dir)
    except DamagedArchive as exc:
        if from_zip is not None:
            raise
        archive.unlink(missing_ok=True)  # a download of ours: kept, it would be reused forever
        raise FetchError(
            f"{exc}; deleted, so that the next `pneumolab data fetch` downloads it again"
        ) from None
