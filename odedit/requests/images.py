"""Row-level image checks that Great Expectations does not fit: the path stays inside the
allowed image roots (no `..`, no absolute path elsewhere, no symlink out), the file exists,
has a supported type, is within the byte and pixel limits (decompression-bomb guard, judged
from the header before any pixel is allocated), and decodes completely (`verify()`, then a
fresh `load()` to catch truncation). Mode is not judged here: palette, 16-bit, RGBA, CMYK
images are accepted and converted later.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from odedit.requests.reasons import Reason

SUPPORTED_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "MPO"})


@dataclass(frozen=True)
class ImageProblem:
    reason: Reason
    message: str


def _parts(path_str: str) -> tuple[str, ...]:
    # Judge both separators so `..\\x` is caught on any OS.
    return PurePosixPath(path_str.replace("\\", "/")).parts


def _is_absolute(path_str: str) -> bool:
    return path_str.startswith(("/", "\\")) or PureWindowsPath(path_str).is_absolute()


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_path_lexically(path_str: str) -> ImageProblem | None:
    """Checks that need no file system: `..` components and the suffix."""
    if ".." in _parts(path_str):
        return ImageProblem(Reason.IMAGE_PATH_ESCAPES_ROOT, f"path {path_str!r} contains '..'")
    if "\x00" in path_str:
        return ImageProblem(Reason.IMAGE_PATH_ESCAPES_ROOT, f"path {path_str!r} contains a NUL byte")
    suffix = Path(path_str).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        return ImageProblem(
            Reason.UNSUPPORTED_IMAGE_TYPE,
            f"{path_str!r} has unsupported type {suffix or '(none)'!r} "
            f"(supported: {', '.join(sorted(SUPPORTED_SUFFIXES))})",
        )
    return None


def resolve_image(path_str: str, roots: Sequence[Path]) -> tuple[Path | None, ImageProblem | None]:
    """The real file `path_str` names under one of `roots`, or the problem with it.

    Relative paths are tried against each root in order (first existing wins); absolute paths
    must lie inside a root. Symlinks are followed and the *target* must stay inside a root."""
    problem = check_path_lexically(path_str)
    if problem:
        return None, problem
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    if not real_roots:
        return None, ImageProblem(Reason.IMAGE_MISSING, f"no image root given to resolve {path_str!r}")
    if _is_absolute(path_str):
        candidates = [Path(path_str)]
        if not any(_inside(Path(os.path.abspath(path_str)), r) for r in real_roots):
            # an absolute path through a symlinked root is fine if it resolves inside
            if not any(_inside(Path(os.path.realpath(path_str)), r) for r in real_roots):
                return None, ImageProblem(Reason.IMAGE_PATH_ESCAPES_ROOT,
                                          f"absolute path {path_str!r} is outside the image roots")
    else:
        candidates = [Path(root) / path_str for root in roots]
    existing = [c for c in candidates if os.path.lexists(c)]
    if not existing:
        where = ", ".join(str(r) for r in roots)
        return None, ImageProblem(Reason.IMAGE_MISSING, f"image {path_str!r} not found under {where}")
    real = Path(os.path.realpath(existing[0]))
    if not any(_inside(real, r) for r in real_roots):
        return None, ImageProblem(Reason.IMAGE_PATH_ESCAPES_ROOT,
                                  f"image {path_str!r} resolves (through a symlink) outside the image roots")
    if not real.is_file():
        return None, ImageProblem(Reason.IMAGE_MISSING, f"image {path_str!r} is not a regular file")
    return real, None


def check_image_file(path: Path, max_bytes: int, max_pixels: int) -> ImageProblem | None:
    """Decode checks on an existing file. Never allocates the pixels of an image whose header
    declares more than `max_pixels`."""
    size = path.stat().st_size
    if size > max_bytes:
        return ImageProblem(Reason.IMAGE_TOO_LARGE, f"image {path.name!r} is {size} bytes (limit {max_bytes})")
    if size == 0:
        return ImageProblem(Reason.IMAGE_UNDECODABLE, f"image {path.name!r} is an empty file")
    with warnings.catch_warnings():
        # PIL warns past MAX_IMAGE_PIXELS and raises past twice that; both are rejections.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                fmt, (w, h) = img.format, img.size
                if w * h > max_pixels:
                    return ImageProblem(Reason.IMAGE_TOO_LARGE,
                                        f"image {path.name!r} declares {w}x{h} pixels (limit {max_pixels})")
                if fmt not in SUPPORTED_FORMATS:
                    return ImageProblem(Reason.UNSUPPORTED_IMAGE_TYPE,
                                        f"image {path.name!r} is {fmt}, not a supported format")
                img.verify()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return ImageProblem(Reason.IMAGE_TOO_LARGE, f"image {path.name!r}: decompression bomb guard ({exc})")
        except UnidentifiedImageError:
            return ImageProblem(Reason.IMAGE_UNDECODABLE, f"image {path.name!r} does not decode as an image")
        except Exception as exc:  # verify() raises SyntaxError/OSError/struct.error/... on corrupt data
            return ImageProblem(Reason.IMAGE_TRUNCATED, f"image {path.name!r} is corrupt: {exc}")
        try:
            with Image.open(path) as img:  # verify() leaves the image unusable: reopen to load
                img.load()
        except Exception as exc:
            reason = Reason.IMAGE_TRUNCATED
            return ImageProblem(reason, f"image {path.name!r} is truncated or corrupt: {exc}")
    return None


class ImageChecker:
    """Checks image paths of many rows, decoding each distinct file once."""

    def __init__(self, roots: Sequence[str | Path], max_bytes: int, max_pixels: int, decode: bool = True):
        self.roots = [Path(r) for r in roots]
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.decode = decode
        self._cache: dict[str, ImageProblem | None] = {}

    def check(self, path_str: str) -> ImageProblem | None:
        if path_str in self._cache:
            return self._cache[path_str]
        if not self.decode:
            problem = check_path_lexically(path_str)
            if problem is None and _is_absolute(path_str) and self.roots:
                real_roots = [Path(os.path.abspath(r)) for r in self.roots]
                if not any(_inside(Path(os.path.abspath(path_str)), r) for r in real_roots):
                    problem = ImageProblem(Reason.IMAGE_PATH_ESCAPES_ROOT,
                                           f"absolute path {path_str!r} is outside the image roots")
        else:
            real, problem = resolve_image(path_str, self.roots)
            if problem is None:
                problem = check_image_file(real, self.max_bytes, self.max_pixels)
        self._cache[path_str] = problem
        return problem

    def content_hash(self, path_str: str) -> str | None:
        """Hash of the decoded RGB pixels of a file that passed `check` (None otherwise or
        without decoding): same picture under another name or format, same hash."""
        if not self.decode or self.check(path_str) is not None:
            return None
        key = "#hash:" + path_str
        if key not in self._cache:
            import hashlib

            from PIL import Image

            real, _ = resolve_image(path_str, self.roots)
            with Image.open(real) as img:
                rgb = img.convert("RGB")
                self._cache[key] = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
        return self._cache[key]
