"""The user's data on disk: paired image folders, paired video clips, and rainy frames without targets.

Layouts (the Restormer / MMagic convention, and the one :func:`~nas_restore.data.synthetic.write_synthetic_folder`
writes)::

    root/input/0001.png   root/target/0001.png            image pairs (also rainy/ + clean/)
    root/input/<clip>/00001.png   root/target/<clip>/00001.png   video clips
    root/SPLITS.txt       optional: lines "name: id id ..." (ids = the number in each file name, or in
                          each clip folder's name)

Pairing rule: an input and a target file pair when their names without extension are equal; if that
leaves files unpaired, names are compared again after removing a leading or trailing ``rain``, ``rainy``,
``norain``, ``no_rain``, ``clean``, ``gt``, ``input`` or ``target`` tag and its separator (so Rain100H's
``rain-001.png`` pairs with ``norain-001.png``). Anything still unpaired is an error that lists it.

Every failure raises :class:`DataError` naming the file or folder and what to do about it.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from nas_restore.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
PAIR_DIR_NAMES: tuple[tuple[str, str], ...] = (("input", "target"), ("rainy", "clean"))
SPLITS_FILE = "SPLITS.txt"
_TAG = r"(?:no[-_]?rain|rainy|rain|clean|gt|input|target)"
_TAG_PREFIX = re.compile(rf"^{_TAG}(?:[-_ .]+|(?=\d))", re.IGNORECASE)
_TAG_SUFFIX = re.compile(rf"[-_ .]+{_TAG}$", re.IGNORECASE)


class DataError(UserError, ValueError):
    """A problem with the user's data; the message names the file or folder and the fix."""


# --------------------------------------------------------------------------------------------------
# files


def natural_key(text: str) -> list:
    """Sort key that puts ``2.png`` before ``10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, naturally sorted (hidden files ignored)."""
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as float32 HxWx3 in [0, 1] (grey -> 3 channels, alpha dropped, 16-bit scaled)."""
    from skimage import io
    from skimage.util import img_as_float32

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        img = io.imread(path)
    except Exception as err:  # imageio/pillow raise many types for corrupt files
        raise DataError(f"cannot read image {path} ({type(err).__name__}: {err}); the file is corrupt or not "
                        f"an image: replace or remove it") from err
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] in (2, 4):
        img = img[..., : img.shape[2] - 1]          # drop alpha
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"image {path} has shape {img.shape}; expected a grey, RGB or RGBA still image")
    try:
        arr = img_as_float32(img)
    except ValueError as err:
        raise DataError(f"image {path} has an unsupported pixel type {img.dtype}: save it as 8- or 16-bit") from err
    return np.clip(arr, 0.0, 1.0)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header only (cheap); an unreadable file is a DataError."""
    from PIL import Image, UnidentifiedImageError  # pillow comes with scikit-image (through imageio)

    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"cannot read image {path} ({type(err).__name__}: {err}); the file is corrupt or not "
                        f"an image: replace or remove it") from err
    return height, width


# --------------------------------------------------------------------------------------------------
# pairing


def find_pair_dirs(root: str | Path) -> tuple[Path, Path]:
    """``(input_dir, target_dir)`` of a data folder: ``input/`` + ``target/`` or ``rainy/`` + ``clean/``."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}; give a folder with input/ + target/ (or rainy/ + clean/) "
                        "images, or omit --data for the built-in synthetic rain")
    if not root.is_dir():
        raise DataError(f"{root} is a file; give the folder that holds input/ and target/ (or rainy/ and clean/)")
    found = [(root / a, root / b) for a, b in PAIR_DIR_NAMES if (root / a).is_dir() and (root / b).is_dir()]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(f"{root} holds both input/+target/ and rainy/+clean/: keep one pair of folders")
    for a, b in PAIR_DIR_NAMES:
        if (root / a).is_dir() != (root / b).is_dir():
            have, missing = (a, b) if (root / a).is_dir() else (b, a)
            raise DataError(f"{root} has {have}/ but no {missing}/ folder: add the {missing}/ folder with the "
                            f"matching images (for rainy frames without targets use FrameSequence)")
    subs = [p.name + "/" for p in _subdirs(root)][:10]
    raise DataError(f"{root} has no input/+target/ (or rainy/+clean/) folders (found: {subs or 'no subfolders'}); "
                    f"put rainy images in input/ and clean ones with the same names in target/")


def _pair_key(stem: str) -> str:
    key = _TAG_PREFIX.sub("", stem)
    key = _TAG_SUFFIX.sub("", key)
    return key or stem


def _keyed(files: Sequence[Path], strip_tags: bool, folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in files:
        key = _pair_key(path.stem) if strip_tags else path.stem
        if key in out:
            raise DataError(f"{folder}: {out[key].name} and {path.name} both pair as {key!r}; rename or remove one")
        out[key] = path
    return out


def pair_files(inputs: Sequence[Path], targets: Sequence[Path], input_dir: Path,
               target_dir: Path) -> list[tuple[str, Path, Path]]:
    """``(name, input_path, target_path)`` per pair, naturally sorted by name (see the pairing rule)."""
    if not inputs:
        raise DataError(f"no images in {input_dir} (looked for {sorted(IMAGE_SUFFIXES)})")
    if not targets:
        raise DataError(f"no images in {target_dir} (looked for {sorted(IMAGE_SUFFIXES)})")
    attempts = []
    for strip in (False, True):
        a, b = _keyed(inputs, strip, input_dir), _keyed(targets, strip, target_dir)
        only_a, only_b = sorted(set(a) - set(b), key=natural_key), sorted(set(b) - set(a), key=natural_key)
        if not only_a and not only_b:
            return [(k, a[k], b[k]) for k in sorted(a, key=natural_key)]
        attempts.append((len(only_a) + len(only_b), [a[k].name for k in only_a], [b[k].name for k in only_b]))
    _, only_a, only_b = min(attempts, key=lambda x: x[0])
    parts = []
    if only_a:
        parts.append(f"{len(only_a)} in {input_dir} without a target (e.g. {only_a[:5]})")
    if only_b:
        parts.append(f"{len(only_b)} in {target_dir} without an input (e.g. {only_b[:5]})")
    raise DataError("unpaired images: " + "; ".join(parts) + ". Input and target files must have the same names "
                    "(or names that differ only by a rain/norain-style tag): rename or remove the unpaired files")


def read_splits(root: Path) -> dict[str, list[int]]:
    """Splits from ``root/SPLITS.txt`` (lines ``name: id id ...``; ``#`` starts a comment)."""
    path = root / SPLITS_FILE
    if not path.is_file():
        raise DataError(f"split requested but {path} does not exist: add it (lines like 'fit: 1 2 3') or drop split=")
    splits: dict[str, list[int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, ids = line.partition(":")
        try:
            if not sep:
                raise ValueError("no ':'")
            splits[name.strip()] = [int(x) for x in ids.split()]
        except ValueError as err:
            raise DataError(f"{path} line {number}: expected 'name: id id ...' with integer ids, got {line!r}") from err
    return splits


def _name_id(name: str, root: Path) -> int:
    numbers = re.findall(r"\d+", name)
    if len(numbers) != 1:
        raise DataError(f"{root}: cannot tell the id of pair {name!r} for {SPLITS_FILE} (it needs exactly one number "
                        f"in the file name): rename it or select pairs with names= instead of split=")
    return int(numbers[0])


# --------------------------------------------------------------------------------------------------
# cropping and caching


IMAGE_CACHE_BYTES = 1 << 30  # decoded image pairs a dataset keeps in memory (float32: ~0.6 GiB for Rain100L's 54 fit pairs)


class _Cache:
    """A least-recently-used store of decoded images, bounded in entries and in bytes.

    Windows of neighbouring frames share most of their files; a training epoch over image pairs crops
    a small patch from every image, and decoding the two PNGs anew each time cost more than the
    network's own step (reports/epoch_split_cpu.md). Callers copy what they take (``_to_tensor``).
    """

    def __init__(self, size: int | None = None, max_bytes: int | None = None):
        self.size, self.max_bytes = size, max_bytes
        self.items: OrderedDict[Path, np.ndarray] = OrderedDict()
        self.bytes = 0

    def load(self, path: Path) -> np.ndarray:
        if path in self.items:
            self.items.move_to_end(path)
            return self.items[path]
        img = load_image(path)
        self.items[path] = img
        self.bytes += img.nbytes
        while self.items and ((self.size is not None and len(self.items) > self.size)
                              or (self.max_bytes is not None and self.bytes > self.max_bytes)):
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes
        return img


def _item_rng(seed: int, index: int, augment: bool) -> np.random.Generator:
    """Crops are a function of (seed, index); with ``augment`` a draw from torch's generator is mixed in,
    so epochs and DataLoader workers (which torch seeds apart) see different crops and flips."""
    words = [abs(int(seed)), int(seed < 0), int(index)]
    if augment:
        words.append(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    return np.random.default_rng(words)


def _crop_box(shape: tuple[int, int], patch: int | None, rng: np.random.Generator,
              what: str) -> tuple[int, int, int, int]:
    h, w = shape
    if patch is None:
        return 0, h, 0, w
    if h < patch or w < patch:
        raise DataError(f"{what} is {h}x{w} px, smaller than patch_size={patch}: use a smaller patch_size")
    y = int(rng.integers(0, h - patch + 1))
    x = int(rng.integers(0, w - patch + 1))
    return y, y + patch, x, x + patch


def _to_tensor(imgs: Sequence[np.ndarray], box: tuple[int, int, int, int], flip: bool) -> torch.Tensor:
    y0, y1, x0, x1 = box
    arr = np.stack([img[y0:y1, x0:x1] for img in imgs])
    if flip:
        arr = arr[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2), dtype=np.float32))


def _check_patch(patch_size: int | None) -> None:
    if patch_size is not None and patch_size < 1:
        raise ValueError(f"patch_size must be a positive number of pixels or None, got {patch_size}")


def _check_frames(frames: int) -> None:
    if frames < 1 or frames % 2 == 0:
        raise ValueError(f"frames must be odd and >= 1 (a window centred on a frame), got {frames}")


def window_indices(t: int, n: int, frames: int) -> list[int]:
    """Indices of the ``frames``-frame window centred on ``t`` in a clip of ``n`` frames, edges replicated."""
    r = frames // 2
    return [min(max(t + k, 0), n - 1) for k in range(-r, r + 1)]


# --------------------------------------------------------------------------------------------------
# datasets


class PairedImageFolder(Dataset):
    """Rainy/clean image pairs. Items ``(frames [T, 3, H, W], target [3, H, W])`` with ``T = frames``
    (``frames > 1`` repeats the image, to run a multi-frame model on stills).

    ``patch_size=None`` gives full images; otherwise a crop (the same for input and target), random per
    (seed, index), plus a random horizontal flip and fresh crops every call when ``augment``.
    ``split`` selects a split of ``root/SPLITS.txt``; ``names`` selects pairs by name.
    """

    def __init__(self, root: str | Path, patch_size: int | None = None, augment: bool = False, seed: int = 0,
                 split: str | None = None, names: Sequence[str] | None = None, frames: int = 1):
        _check_patch(patch_size)
        _check_frames(frames)
        self.root = Path(root)
        self.patch_size, self.augment, self.seed, self.frames = patch_size, augment, int(seed), int(frames)
        self.input_dir, self.target_dir = find_pair_dirs(self.root)
        if _subdirs(self.input_dir) and not list_images(self.input_dir):
            raise DataError(f"{self.input_dir} holds subfolders, not images: it looks like video clips; "
                            f"use VideoClipFolder or open_dataset")
        pairs = pair_files(list_images(self.input_dir), list_images(self.target_dir), self.input_dir,
                           self.target_dir)
        if split is not None:
            pairs = self._select_split(pairs, split)
        if names is not None:
            by_name = {p[0]: p for p in pairs}
            unknown = [n for n in names if n not in by_name]
            if unknown:
                raise DataError(f"{self.root}: no pair named {unknown[:5]} (names look like {list(by_name)[:5]})")
            pairs = [by_name[n] for n in names]
        if not pairs:
            raise DataError(f"{self.root}: the selection is empty (split={split!r}, names={names!r})")
        for _, a, b in pairs:
            if image_size(a) != image_size(b):
                raise DataError(f"size mismatch: {a} is {image_size(a)} but {b} is {image_size(b)} (height, width); "
                                f"input and target of a pair must have the same size: resize or remove the pair")
        self._pairs = pairs
        self.names = [p[0] for p in pairs]
        self._cache = _Cache(max_bytes=IMAGE_CACHE_BYTES)

    def _select_split(self, pairs: list[tuple[str, Path, Path]], split: str) -> list[tuple[str, Path, Path]]:
        splits = read_splits(self.root)
        if split not in splits:
            raise DataError(f"split {split!r} is not in {self.root / SPLITS_FILE}; choose one of {sorted(splits)} "
                            "with --split")
        by_id: dict[int, tuple[str, Path, Path]] = {}
        for pair in pairs:
            key = _name_id(pair[0], self.root)
            if key in by_id:
                raise DataError(f"{self.root}: pairs {by_id[key][0]!r} and {pair[0]!r} share id {key}; "
                                f"{SPLITS_FILE} ids must be unique")
            by_id[key] = pair
        missing = [i for i in splits[split] if i not in by_id]
        if missing:
            raise DataError(f"{self.root / SPLITS_FILE}: split {split!r} names id(s) {missing[:10]} with no pair "
                            f"in {self.input_dir}")
        return [by_id[i] for i in splits[split]]

    def __len__(self) -> int:
        return len(self._pairs)

    def pair_paths(self, index: int) -> tuple[Path, Path]:
        """(input file, target file) of item ``index``."""
        _, a, b = self._pairs[index]
        return a, b

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self._pairs):
            raise IndexError(f"index {index} out of range for {len(self._pairs)} pairs")
        _, a, b = self._pairs[index]
        rainy, clean = self._cache.load(a), self._cache.load(b)
        if rainy.shape != clean.shape:
            raise DataError(f"size mismatch: {a} is {rainy.shape[:2]} but {b} is {clean.shape[:2]}: resize or remove "
                            "the pair")
        rng = _item_rng(self.seed, index, self.augment)
        box = _crop_box(rainy.shape[:2], self.patch_size, rng, str(a))
        flip = bool(self.augment and rng.random() < 0.5)
        frames = _to_tensor([rainy], box, flip).expand(self.frames, -1, -1, -1).contiguous()
        return frames, _to_tensor([clean], box, flip)[0]


class VideoClipFolder(Dataset):
    """Paired video clips: ``input/<clip>/`` frames with matching ``target/<clip>/`` frames.

    One item per (clip, t): the ``frames``-frame window centred on t, edge frames replicated (centre 0 of
    5 -> frames [0, 0, 0, 1, 2]), and the clean frame t. A clip must have at least ``frames`` frames, so
    that at least one window is made of real neighbours only; shorter clips are a DataError.
    The same crop and flip apply to every frame of a window and to the target.
    ``split`` selects the clips of a split of ``root/SPLITS.txt``: a clip's id is the one number in its
    folder name (``nas-restore synth --holdout`` writes such names and the file).
    """

    def __init__(self, root: str | Path, frames: int = 5, patch_size: int | None = None, augment: bool = False,
                 seed: int = 0, split: str | None = None):
        _check_patch(patch_size)
        _check_frames(frames)
        self.root = Path(root)
        self.frames, self.patch_size, self.augment, self.seed = int(frames), patch_size, augment, int(seed)
        self.input_dir, self.target_dir = find_pair_dirs(self.root)
        loose = list_images(self.input_dir)
        if loose:
            raise DataError(f"{self.input_dir} holds image files ({loose[0].name}, ...) besides clip folders: a "
                            f"video data set has one subfolder of frames per clip; use PairedImageFolder for images")
        clip_dirs = _subdirs(self.input_dir)
        if not clip_dirs:
            raise DataError(f"no clip folders in {self.input_dir}: put each clip's frames in input/<clip>/")
        if split is not None:
            clip_dirs = self._select_split(clip_dirs, split)
        self.clips: list[str] = []
        self._frames: dict[str, list[tuple[str, Path, Path]]] = {}
        self.index: list[tuple[str, int]] = []
        for clip_dir in clip_dirs:
            clip = clip_dir.name
            target_clip = self.target_dir / clip
            if not target_clip.is_dir():
                raise DataError(f"clip {clip!r} has no clean frames: {target_clip} is missing; add it or remove "
                                f"{clip_dir}")
            pairs = pair_files(list_images(clip_dir), list_images(target_clip), clip_dir, target_clip)
            if len(pairs) < self.frames:
                raise DataError(f"clip {clip!r} ({clip_dir}) has {len(pairs)} frame(s) but frames={self.frames} "
                                f"needs at least {self.frames}: use a smaller frames= or a longer clip")
            size = image_size(pairs[0][1])
            for _, a, b in pairs:
                for path in (a, b):
                    if image_size(path) != size:
                        raise DataError(f"size mismatch in clip {clip!r}: {path} is {image_size(path)} but "
                                        f"{pairs[0][1]} is {size} (height, width); every frame must match")
            self.clips.append(clip)
            self._frames[clip] = pairs
            self.index += [(clip, t) for t in range(len(pairs))]
        self.names = [f"{clip}/{self._frames[clip][t][0]}" for clip, t in self.index]
        self._cache = _Cache(2 * self.frames + 2)

    def _select_split(self, clip_dirs: list[Path], split: str) -> list[Path]:
        """The clip folders of ``split``, in the order SPLITS.txt lists their ids."""
        splits = read_splits(self.root)
        if split not in splits:
            raise DataError(f"split {split!r} is not in {self.root / SPLITS_FILE}; choose one of {sorted(splits)} "
                            "with --split")
        by_id: dict[int, Path] = {}
        for clip_dir in clip_dirs:
            key = _name_id(clip_dir.name, self.root)
            if key in by_id:
                raise DataError(f"{self.root}: clips {by_id[key].name!r} and {clip_dir.name!r} share id {key}; "
                                f"{SPLITS_FILE} ids must be unique")
            by_id[key] = clip_dir
        missing = [i for i in splits[split] if i not in by_id]
        if missing:
            raise DataError(f"{self.root / SPLITS_FILE}: split {split!r} names id(s) {missing[:10]} with no clip "
                            f"in {self.input_dir}")
        if not splits[split]:
            raise DataError(f"{self.root / SPLITS_FILE}: split {split!r} lists no clip: give it clip ids or "
                            "choose another split")
        return [by_id[i] for i in splits[split]]

    def __len__(self) -> int:
        return len(self.index)

    def pair_paths(self, index: int) -> tuple[Path, Path]:
        """(input file, target file) of the centre frame of item ``index``."""
        clip, t = self.index[index]
        _, a, b = self._frames[clip][t]
        return a, b

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self.index):
            raise IndexError(f"index {index} out of range for {len(self.index)} windows")
        clip, t = self.index[index]
        pairs = self._frames[clip]
        window = [self._cache.load(pairs[k][1]) for k in window_indices(t, len(pairs), self.frames)]
        clean = load_image(pairs[t][2])
        rng = _item_rng(self.seed, index, self.augment)
        box = _crop_box(clean.shape[:2], self.patch_size, rng, f"clip {clip!r}")
        flip = bool(self.augment and rng.random() < 0.5)
        return _to_tensor(window, box, flip), _to_tensor([clean], box, flip)[0]


class FrameSequence(Dataset):
    """Rainy frames without targets (real rain video): item ``i`` is the window ``[T, 3, H, W]`` centred
    on frame ``i`` (edges replicated). ``.names`` / ``.paths`` name the centre frames, for writing outputs."""

    def __init__(self, folder: str | Path, frames: int = 5):
        _check_frames(frames)
        self.folder, self.frames = Path(folder), int(frames)
        if not self.folder.is_dir():
            raise DataError(f"frame folder not found: {self.folder}")
        self.paths = list_images(self.folder)
        if not self.paths:
            raise DataError(f"no frames in {self.folder} (looked for {sorted(IMAGE_SUFFIXES)})")
        size = image_size(self.paths[0])
        for path in self.paths[1:]:
            if image_size(path) != size:
                raise DataError(f"size mismatch: {path} is {image_size(path)} but {self.paths[0]} is {size}; "
                                f"every frame of a sequence must have one size")
        self.names = [p.stem for p in self.paths]
        self._cache = _Cache(2 * self.frames + 2)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self.paths):
            raise IndexError(f"index {index} out of range for {len(self.paths)} frames")
        window = [self._cache.load(self.paths[k]) for k in window_indices(index, len(self.paths), self.frames)]
        h, w = window[0].shape[:2]
        return _to_tensor(window, (0, h, 0, w), False)


def is_video_folder(root: str | Path) -> bool:
    """Whether ``root`` holds clips (subfolders of frames) rather than image pairs."""
    input_dir, _ = find_pair_dirs(root)
    return bool(_subdirs(input_dir)) and not list_images(input_dir)


def open_dataset(root: str | Path, frames: int = 1, patch_size: int | None = None, augment: bool = False,
                 seed: int = 0, split: str | None = None) -> PairedImageFolder | VideoClipFolder:
    """Image pairs or video clips, whichever ``root`` holds (clips = subfolders of frames in input/)."""
    if is_video_folder(root):
        return VideoClipFolder(root, frames=frames, patch_size=patch_size, augment=augment, seed=seed, split=split)
    return PairedImageFolder(root, patch_size=patch_size, augment=augment, seed=seed, split=split, frames=frames)


__all__ = [
    "DataError", "load_image", "image_size", "list_images", "natural_key", "find_pair_dirs", "pair_files",
    "read_splits", "window_indices", "PairedImageFolder", "VideoClipFolder", "FrameSequence", "is_video_folder",
    "open_dataset",
]
