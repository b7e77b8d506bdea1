"""Tests of smoothgen.data: the shared data (counts, order, pixels, variant), the cache, and the
download path against small synthetic archives served from a loopback HTTP server."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pickle
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothgen import data

SHARED = data.data_root()  # $SMOOTHGEN_DATA, else data/ in the repository (tests marked needs_data)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_NAMES = tuple(f"data_batch_{k}" for k in range(1, 6))


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: any write into root changes it."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _expected_variant(manifest: Path) -> str:
    return json.loads(manifest.read_text())["variant"] if manifest.is_file() else "official"


# ============================================================================ shared data


@pytest.fixture(scope="module")
def shared_cifar(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Load both splits of the shared CIFAR-10 once: cold, then warm with hashing disabled."""
    cache = tmp_path_factory.mktemp("cifar-cache")
    before = _snapshot(SHARED)
    out: dict = {"cache": cache}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMOOTHGEN_CACHE", str(cache))
        for split in ("train", "test"):
            t0 = time.perf_counter()
            out[split] = data.load_cifar10(split, root=SHARED)
            out[f"{split}_cold_s"] = time.perf_counter() - t0

        def no_rehash(path: Path, algorithm: str) -> str:
            raise AssertionError(f"warm load re-hashed {path}")

        mp.setattr(data, "_hash_file", no_rehash)
        for split in ("train", "test"):
            t0 = time.perf_counter()
            out[f"{split}_warm"] = data.load_cifar10(split, root=SHARED)
            out[f"{split}_warm_s"] = time.perf_counter() - t0
    out["untouched"] = _snapshot(SHARED) == before
    print({k: round(v, 3) for k, v in out.items() if k.endswith("_s")})
    return out


@pytest.mark.needs_data("cifar10")
@pytest.mark.parametrize(("split", "n"), [("train", 50_000), ("test", 10_000)])
def test_cifar10_shared_counts_and_variant(shared_cifar: dict, split: str, n: int) -> None:
    ds = shared_cifar[split]
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
    assert torch.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10
    assert ds.classes == CLASSES and len(ds) == n and ds.split == split
    assert ds.variant == _expected_variant(SHARED / "cifar10" / "MANIFEST.json")
    assert ds.root == SHARED.resolve()


@pytest.mark.needs_data("cifar10")
def test_cifar10_shared_order_pixels_and_channel_means(shared_cifar: dict) -> None:
    train, test = shared_cifar["train"], shared_cifar["test"]
    # first labels of the official data_batch_1 and test_batch (README of the shared data)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    for ds, name, start in ((test, "test_batch", 0), (train, "data_batch_5", 40_000)):
        with open(SHARED / "cifar10" / "cifar-10-batches-py" / name, "rb") as f:
            raw = pickle.load(f, encoding="bytes")  # shared file, verified by the load above
        rows = ds.images[start:start + 10_000].reshape(10_000, -1).numpy()
        assert np.array_equal(rows, raw[b"data"])
        assert ds.labels[start:start + 10_000].tolist() == raw[b"labels"]
    # R, G, B means differ: a wrong (e.g. NHWC) reshape would mix them
    sums = train.images.numpy().reshape(50_000, 3, 1024).sum(axis=(0, 2), dtype=np.int64)
    mean = sums / (50_000 * 1024 * 255)
    assert np.allclose(mean, [0.4914, 0.4822, 0.4465], atol=3e-4)


@pytest.mark.needs_data("cifar10")
def test_cifar10_warm_load_is_fast_equal_and_does_not_rehash(shared_cifar: dict) -> None:
    assert shared_cifar["train_warm_s"] < 10.0 and shared_cifar["test_warm_s"] < 10.0
    for split in ("train", "test"):
        cold, warm = shared_cifar[split], shared_cifar[f"{split}_warm"]
        assert torch.equal(cold.images, warm.images) and torch.equal(cold.labels, warm.labels)
        assert warm.variant == cold.variant
    assert shared_cifar["untouched"], "loading wrote into the data root"


@pytest.mark.needs_data("cifar10")
def test_cifar10_warm_tensors_are_writable_without_touching_the_cache(
    shared_cifar: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SMOOTHGEN_CACHE", str(shared_cifar["cache"]))
    first = data.load_cifar10("test", root=SHARED)
    original = first.images[0, 0, 0, 0].item()
    first.images[0, 0, 0, 0] = (original + 1) % 256
    again = data.load_cifar10("test", root=SHARED)
    assert again.images[0, 0, 0, 0].item() == original


@pytest.fixture(scope="module")
def shared_ptb(tmp_path_factory: pytest.TempPathFactory) -> dict[str, data.PTB]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMOOTHGEN_CACHE", str(tmp_path_factory.mktemp("ptb-cache")))
        return {split: data.load_ptb(split, root=SHARED) for split in ("train", "valid", "test")}


@pytest.mark.needs_data("ptb")
@pytest.mark.parametrize(
    ("split", "n_tokens", "n_lines"),
    [("train", 929_589, 42_068), ("valid", 73_760, 3_370), ("test", 82_430, 3_761)],
)
def test_ptb_shared_counts_and_stream(shared_ptb: dict, split: str, n_tokens: int, n_lines: int) -> None:
    ds = shared_ptb[split]
    assert ds.tokens.dtype == torch.int64 and ds.tokens.shape == (n_tokens,) and len(ds) == n_tokens
    assert len(ds.vocab) == 10_000 and ds.vocab.itos == shared_ptb["train"].vocab.itos
    assert int((ds.tokens == ds.vocab.eos_id).sum()) == n_lines
    assert ds.variant == _expected_variant(SHARED / "ptb" / "MANIFEST.json") and ds.split == split
    text = (SHARED / "ptb" / f"ptb.{split}.txt").read_text()
    stream = [w for line in text.splitlines() for w in [*line.split(), "<eos>"]]
    assert ds.vocab.decode(ds.tokens) == " ".join(stream)


@pytest.mark.needs_data("ptb")
def test_ptb_shared_vocabulary_order_and_roundtrip(shared_ptb: dict) -> None:
    train = shared_ptb["train"]
    vocab = train.vocab
    counts = torch.bincount(train.tokens, minlength=len(vocab)).tolist()
    keys = [(-c, w) for c, w in zip(counts, vocab.itos)]
    assert keys == sorted(keys), "ids must be ordered by count descending, then alphabetically"
    assert vocab.itos[:3] == ("the", "<unk>", "<eos>")  # as in the TensorFlow PTB reader
    assert vocab.encode(vocab.decode(train.tokens[:500])) == train.tokens[:500].tolist()
    assert vocab.encode("the zzyzx-not-a-word <eos>") == [vocab.stoi["the"], vocab.unk_id, vocab.eos_id]


# ============================================================================ Vocabulary


def test_vocabulary_from_tokens_orders_by_count_then_alphabet() -> None:
    vocab = data.Vocabulary.from_tokens("b a b c c <eos>".split())
    assert vocab.itos == ("b", "c", "<eos>", "a", "<unk>")
    assert dict(vocab.stoi) == {w: i for i, w in enumerate(vocab.itos)}
    assert (vocab.eos_id, vocab.unk_id, len(vocab)) == (2, 4, 5)


def test_vocabulary_encode_decode() -> None:
    vocab = data.Vocabulary(("<unk>", "<eos>", "x", "y"))
    assert vocab.encode("y x  q\n<eos>") == vocab.encode(["y", "x", "q", "<eos>"]) == [3, 2, 0, 1]
    assert vocab.decode([3, 2, 0, 1]) == vocab.decode(torch.tensor([3, 2, 0, 1])) == "y x <unk> <eos>"
    for bad in ([4], [-1], [True], [1.0]):
        with pytest.raises(ValueError, match="ids must be ints"):
            vocab.decode(bad)


@pytest.mark.parametrize(
    ("itos", "match"),
    [
        (("a", "<eos>"), "must contain"),
        (("a", "a", "<eos>", "<unk>"), "distinct"),
        (("a b", "<eos>", "<unk>"), "whitespace"),
    ],
)
def test_vocabulary_rejects_bad_word_lists(itos: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        data.Vocabulary(itos)


# ============================================================================ arguments, roots


@pytest.mark.parametrize(
    ("load", "split", "valid"),
    [(data.load_cifar10, "valid", "'train', 'test'"), (data.load_ptb, "val", "'train', 'valid', 'test'")],
)
def test_unknown_split_lists_valid_splits(load, split: str, valid: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"valid splits: {valid}"):
        load(split, root=tmp_path)


@pytest.mark.parametrize("load", [data.load_cifar10, data.load_ptb])
def test_missing_root_without_download_is_a_clear_error(load, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SMOOTHGEN_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="download=True.*SMOOTHGEN_DATA"):
        load("test", root=root)
    assert not root.exists()


def test_root_pointing_at_the_cifar10_folder_gets_a_hint(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="pass its parent folder as root"):
        data.load_cifar10("test", root=tmp_path)


def test_data_root_and_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMOOTHGEN_DATA", str(tmp_path / "env"))
    assert data.data_root(tmp_path / "arg") == (tmp_path / "arg").resolve()
    assert data.data_root() == (tmp_path / "env").resolve()
    monkeypatch.delenv("SMOOTHGEN_DATA")
    assert data.data_root() == Path(data.__file__).resolve().parent.parent / "data"
    with pytest.raises(ValueError, match="non-empty"):
        data.data_root("")
    monkeypatch.setenv("SMOOTHGEN_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SMOOTHGEN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "smoothgen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "smoothgen"


# ============================================================================ synthetic data


@dataclass
class Fake:
    cifar: dict[str, bytes]  # file name -> bytes of the batch files and batches.meta
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    archive: bytes
    ptb: dict[str, bytes]


def _batch(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    raw = {b"batch_label": b"fake", b"labels": labels.tolist(), b"data": images.reshape(n, -1),
           b"filenames": [b"f%d.png" % i for i in range(n)]}
    return images, labels, pickle.dumps(raw, protocol=2)


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.fixture(scope="module")
def fake() -> Fake:
    cifar, images, labels = {}, {}, {}
    for k, name in enumerate((*TRAIN_NAMES, "test_batch")):
        images[name], labels[name], cifar[name] = _batch(k, 6 + k)
    meta = {b"num_cases_per_batch": 10, b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}
    cifar["batches.meta"] = pickle.dumps(meta, protocol=2)
    members = {f"cifar-10-batches-py/{n}": b for n, b in cifar.items()}
    members |= {"cifar-10-batches-py/readme.html": b"<html/>", "../escape.txt": b"x"}
    ptb = {"ptb.train.txt": b" the cat sat \n the dog <unk> \n a cat N \n",
           "ptb.valid.txt": b" the cat \n", "ptb.test.txt": b" a zebra sat \n"}
    return Fake(cifar, images, labels, _tar(members), ptb)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        body, mode = self.server.routes.get(self.path, (b"", "missing"))
        if mode == "missing":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "ok":
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        if mode == "raise":
            raise ConnectionAbortedError("server died mid-body")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)  # loopback only
    srv.routes = {}
    srv.handle_error = lambda *args: None
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@dataclass
class Env:
    root: Path
    cache: Path
    server: http.server.ThreadingHTTPServer
    fake: Fake

    def serve(self, mode: str = "ok", cifar: bytes | None = None,
              ptb: dict[str, bytes] | None = None) -> None:
        routes = {"/cifar/cifar-10-python.tar.gz": (self.fake.archive if cifar is None else cifar, mode)}
        routes |= {f"/ptb/{n}": (b, mode) for n, b in (ptb or self.fake.ptb).items()}
        self.server.routes = routes


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server, fake: Fake) -> Env:
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(data, "CIFAR10_URL", f"{base}/cifar/cifar-10-python.tar.gz")
    monkeypatch.setattr(data, "CIFAR10_ARCHIVE_MD5", _md5(fake.archive))
    monkeypatch.setattr(data, "CIFAR10_MD5", {n: _md5(b) for n, b in fake.cifar.items()})
    monkeypatch.setattr(data, "PTB_URL", f"{base}/ptb/")
    monkeypatch.setattr(data, "PTB_MD5", {n: _md5(b) for n, b in fake.ptb.items()})
    monkeypatch.setenv("SMOOTHGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SMOOTHGEN_DATA", raising=False)
    e = Env(tmp_path / "data", tmp_path / "cache", server, fake)
    e.serve()
    return e


def _assert_matches_fake(ds: data.CIFAR10, fake: Fake, names: tuple[str, ...]) -> None:
    assert np.array_equal(ds.images.numpy(), np.concatenate([fake.images[n] for n in names]))
    assert np.array_equal(ds.labels.numpy(), np.concatenate([fake.labels[n] for n in names]))
    assert ds.classes == CLASSES


def test_download_cifar10_fetches_verifies_and_extracts(env: Env) -> None:
    ds = data.load_cifar10("train", root=env.root, download=True)
    _assert_matches_fake(ds, env.fake, TRAIN_NAMES)
    assert ds.variant == "official" and ds.root == env.root.resolve()
    cifar_dir = env.root / "cifar10"
    assert _files(env.root) == sorted([cifar_dir / "cifar-10-python.tar.gz"] + [
        cifar_dir / "cifar-10-batches-py" / n for n in env.fake.cifar])
    assert not (env.root.parent / "escape.txt").exists()
    env.serve("missing")  # the test split is already there: no network needed
    _assert_matches_fake(data.load_cifar10("test", root=env.root), env.fake, ("test_batch",))


def test_existing_archive_is_used_without_network(env: Env) -> None:
    env.serve("missing")
    archive = env.root / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(env.fake.archive)
    _assert_matches_fake(data.load_cifar10("test", root=env.root, download=True), env.fake, ("test_batch",))


def test_download_ptb_builds_stream_and_train_vocabulary(env: Env) -> None:
    ds = data.load_ptb("test", root=env.root, download=True)
    assert ds.vocab.itos == ("<eos>", "cat", "the", "<unk>", "N", "a", "dog", "sat")
    assert ds.tokens.tolist() == [5, 3, 7, 0] and ds.vocab.decode(ds.tokens) == "a <unk> sat <eos>"
    assert ds.variant == "official"
    assert [p.name for p in _files(env.root)] == ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]
    assert data.load_ptb("valid", root=env.root).tokens.tolist() == [2, 1, 0]


def test_corrupted_download_raises_checksum_error_and_leaves_nothing(env: Env) -> None:
    bad = bytearray(env.fake.archive)
    bad[-1] ^= 0xFF
    env.serve(cifar=bytes(bad))
    with pytest.raises(data.ChecksumError) as err:
        data.load_cifar10("test", root=env.root, download=True)
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and _md5(env.fake.archive) in msg and _md5(bytes(bad)) in msg
    assert "download=True" in msg and "SMOOTHGEN_DATA" in msg
    assert _files(env.root) == [] and not any(env.root.rglob("*"))
    env.serve(ptb={**env.fake.ptb, "ptb.train.txt": b" the dog \n"})
    with pytest.raises(data.ChecksumError, match="ptb.train.txt"):
        data.load_ptb("valid", root=env.root, download=True)
    assert "ptb.train.txt" not in [p.name for p in _files(env.root)]


def test_corrupted_file_on_disk_raises_checksum_error(env: Env) -> None:
    data.load_cifar10("test", root=env.root, download=True)
    path = env.root / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    payload = bytearray(path.read_bytes())
    payload[-3] ^= 0x01
    path.write_bytes(bytes(payload))
    with pytest.raises(data.ChecksumError) as err:
        data.load_cifar10("train", root=env.root)
    assert err.value.path == path and err.value.algorithm == "md5"
    assert err.value.expected == _md5(env.fake.cifar["data_batch_3"])
    assert err.value.actual == _md5(bytes(payload))
    assert "data_batch_3" in str(err.value) and err.value.expected in str(err.value)
    _assert_matches_fake(data.load_cifar10("test", root=env.root), env.fake, ("test_batch",))


@pytest.mark.parametrize("mode", ["truncate", "raise", "missing"])
@pytest.mark.parametrize("load", [data.load_cifar10, data.load_ptb])
def test_interrupted_download_leaves_nothing_half_written(env: Env, mode: str, load) -> None:
    env.serve(mode)
    with pytest.raises(ConnectionError, match="nothing was written"):
        load("test", root=env.root, download=True)
    assert _files(env.root) == [] and not any(env.root.rglob("*")), "no file and no empty folder left behind"
    env.serve("ok")
    assert len(load("test", root=env.root, download=True)) > 0


def test_read_only_root_works_and_is_never_written(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    data.load_cifar10("train", root=env.root, download=True)
    data.load_ptb("train", root=env.root, download=True)
    paths = [env.root, *env.root.rglob("*")]
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        before = _snapshot(env.root)
        fresh = env.cache.parent / "fresh-cache"
        monkeypatch.setenv("SMOOTHGEN_CACHE", str(fresh))
        for _ in range(2):  # cold, then warm
            _assert_matches_fake(data.load_cifar10("train", root=env.root), env.fake, TRAIN_NAMES)
            assert len(data.load_ptb("valid", root=env.root)) == 3
        assert _snapshot(env.root) == before
        assert any(fresh.rglob("*.npy")) and any((fresh / "hashes").iterdir())
    finally:
        for p in paths:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_changed_file_invalidates_the_caches(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    data.load_cifar10("train", root=env.root, download=True)
    path = env.root / "cifar10" / "cifar-10-batches-py" / "data_batch_2"
    new_images, new_labels, new_bytes = _batch(99, 6 + 1)
    path.write_bytes(new_bytes)
    os.utime(path, ns=(1, 1))
    with pytest.raises(data.ChecksumError, match="data_batch_2"):  # no stale hash, no stale arrays
        data.load_cifar10("train", root=env.root)
    monkeypatch.setitem(data.CIFAR10_MD5, "data_batch_2", _md5(new_bytes))
    ds = data.load_cifar10("train", root=env.root)
    assert torch.equal(ds.images[6:13], torch.from_numpy(new_images))
    assert torch.equal(ds.labels[6:13], torch.from_numpy(new_labels))


def test_warm_load_uses_hash_cache_and_survives_a_broken_array_cache(env: Env, monkeypatch) -> None:
    data.load_cifar10("train", root=env.root, download=True)
    for npy in (env.cache / "cifar10").glob("*.images.npy"):
        npy.write_bytes(npy.read_bytes()[:200])  # truncated cache file
    monkeypatch.setattr(data, "_hash_file", lambda *a: pytest.fail("re-hashed an unchanged file"))
    _assert_matches_fake(data.load_cifar10("train", root=env.root), env.fake, TRAIN_NAMES)


def test_unwritable_cache_only_warns(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    data.load_cifar10("test", root=env.root, download=True)
    blocker = env.cache.parent / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SMOOTHGEN_CACHE", str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="SMOOTHGEN_CACHE"):
        ds = data.load_cifar10("test", root=env.root)
    _assert_matches_fake(ds, env.fake, ("test_batch",))


def _write_tree(root: Path, fake: Fake) -> tuple[Path, Path]:
    batch_dir = root / "cifar10" / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    (root / "ptb").mkdir()
    for name, payload in fake.cifar.items():
        (batch_dir / name).write_bytes(payload)
    for name, payload in fake.ptb.items():
        (root / "ptb" / name).write_bytes(payload)
    return batch_dir, root / "ptb"


@pytest.mark.parametrize("inside", [False, True])
def test_variant_manifest_replaces_official_sums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: Fake, inside: bool
) -> None:
    monkeypatch.setenv("SMOOTHGEN_CACHE", str(tmp_path / "cache"))
    batch_dir, ptb_dir = _write_tree(tmp_path / "data", fake)  # official md5s do not match these
    cifar_files = {f"cifar-10-batches-py/{n}": {"sha256": _sha256(b)} for n, b in fake.cifar.items()}
    cifar_manifest = {"name": "cifar10", "variant": "fake-q50", "files": cifar_files}
    manifest_path = (batch_dir if inside else batch_dir.parent) / "MANIFEST.json"
    manifest_path.write_text(json.dumps(cifar_manifest))
    ptb_files = {n: {"sha256": _sha256(b)} for n, b in fake.ptb.items()}
    ptb_manifest = {"name": "ptb", "variant": "fake-ptb", "files": ptb_files}
    (ptb_dir / "MANIFEST.json").write_text(json.dumps(ptb_manifest))
    ds = data.load_cifar10("train", root=tmp_path / "data")
    assert ds.variant == "fake-q50"
    _assert_matches_fake(ds, fake, TRAIN_NAMES)
    assert data.load_ptb("valid", root=tmp_path / "data").variant == "fake-ptb"
    (batch_dir / "test_batch").write_bytes(fake.cifar["test_batch"] + b"\0")
    want = _sha256(fake.cifar["test_batch"])
    with pytest.raises(data.ChecksumError, match=f"sha256 checksum mismatch for .*test_batch.*{want}"):
        data.load_cifar10("test", root=tmp_path / "data")


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        ({"name": "cifar10", "variant": "v", "files": {}}, "lists no sha256 sum for"),
        ({"name": "ptb", "variant": "v", "files": {}}, "describes dataset 'ptb'"),
        ({"name": "cifar10", "files": {}}, "'variant' string"),
        ("not json", "cannot read the variant manifest"),
    ],
)
def test_bad_manifest_is_a_clear_error(tmp_path: Path, monkeypatch, fake: Fake, manifest, match: str) -> None:
    monkeypatch.setenv("SMOOTHGEN_CACHE", str(tmp_path / "cache"))
    batch_dir, _ = _write_tree(tmp_path / "data", fake)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (batch_dir.parent / "MANIFEST.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        data.load_cifar10("test", root=tmp_path / "data")
