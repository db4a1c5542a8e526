"""The portable dataset of an experiment: what DVC versions and other architectures train on.

A finished (or running) experiment's training data is the real images it bought labels
for plus the images it generated. Exported, that is::

    runs/<name>/dataset/
      index.json                  dataset config, class names, cycles, one line per shard
      real.json                   the labelled pool: indices into the dataset's pool split,
                                  their labels and the cycle each was bought in
      synthetic/cycle_003.tar     one cycle's images in the WebDataset layout, uncompressed

Why shards and not the PNG folders: DVC hashes, caches and links every file of a
tracked folder, and its maintainers advise archives over thousands of small files; one
tar per cycle keeps ``dvc status`` and ``dvc push`` at a handful of files whatever the
image count. The PNGs stay viewable in ``runs/<name>/synthetic/cycle_NNN/`` (the
working copy that generation writes), and anything that only has the export — a
``dvc pull`` on another machine, the ``transfer`` stage — reads the tars directly,
checking every image against the SHA-256 in its manifest.

A shard follows the WebDataset convention — per image three consecutive members sharing a
key, ``cycle003_000012.png`` (the image), ``.cls`` (the class index as text) and ``.json``
(its manifest entry: SHA-256, class name, prompt, ε, seed, model, ...) — so ``webdataset``
reads it directly (``WebDataset(path).decode("pil")``: png, cls, json per sample), as does
any reader of that convention (Hugging Face ``datasets``' "webdataset" loader). The ``.json`` members together are the cycle's manifest: on read every image is
checked against the hash in its own entry, and its ``.cls`` against the entry's label.

Shards are deterministic (members in key order, zero timestamps and owners), so a resumed
run exports byte-identical files and DVC sees no change.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from galot_core import synthetic
from galot_core.data import Dataset
from galot_core.errors import GalotError, show
from galot_core.io import atomic_write_bytes, atomic_write_json
from galot_core.runfolder import RunFolder
from galot_core.runfolder.checks import bad_file, check_pool, read_checked_json

FORMAT = "galot-dataset/2"  # 2: WebDataset shards; 1: PNGs + one manifest.jsonl (still read)
_READABLE = (FORMAT, "galot-dataset/1")


def sample_key(cycle: int, index: int) -> str:
    """The WebDataset key of the ``index``-th image (manifest order) of a cycle: unique across shards, no dots."""
    return f"cycle{cycle:03d}_{index:06d}"


def shard_bytes(folder: Path) -> bytes:
    """Every image the cycle folder's manifest lists, with its class and manifest entry, as a deterministic tar."""
    entries = synthetic.read_manifest(folder)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        members = []
        for i, e in enumerate(entries):
            data = (folder / e.file).read_bytes()
            if hashlib.sha256(data).hexdigest() != e.sha256:
                raise GalotError(f"{folder / e.file}: image does not match its manifest hash; run `galot verify` "
                                 "and delete the cycle's synthetic folder to regenerate it")
            key = sample_key(e.cycle, i)
            meta = json.dumps(asdict(e), sort_keys=True).encode("utf-8")
            members += [(f"{key}.cls", str(e.label).encode()), (f"{key}.json", meta), (f"{key}.png", data)]
        for name, data in members:  # key order, then .cls .json .png: each sample's members consecutive
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def export_dataset(run_dir: str | Path, dataset: Dataset, cycles: list[int], accumulate: bool,
                   data_config: dict[str, Any]) -> Path:
    """Write (or bring up to date) ``run_dir/dataset`` for the given completed cycles.

    ``accumulate`` is the experiment's ``gal.accumulate``: whether a cycle's classifier
    trained on every synthetic set so far or on that cycle's alone; consumers do the same.
    """
    run = RunFolder(run_dir)
    out = run.dataset_dir
    state = run.read_pool(len(dataset.pool), len(dataset.class_names))
    atomic_write_json(out / "real.json", {"pool_size": state.pool_size, "labelled": state.labelled,
                                          "labels": state.labels, "cycles": state.cycles})
    # Incremental: an earlier cycle's shard already listed in the index (and on disk) is final;
    # only the newest cycle's shard is packed, so a cycle's export costs the same in cycle 1 and 100.
    done = {s["cycle"]: s for s in read_index(out)["shards"]} if (out / "index.json").exists() else {}
    shards = []
    for c in cycles:
        folder = run.synthetic_dir(c)
        if c != cycles[-1] and c in done and (out / done[c]["file"]).exists():
            shards.append(done[c])
            continue
        if not (folder / "manifest.jsonl").exists():
            continue
        path = out / "synthetic" / f"cycle_{c:03d}.tar"
        data = shard_bytes(folder)
        digest = hashlib.sha256(data).hexdigest()
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            atomic_write_bytes(path, data)
        shards.append({"cycle": c, "file": str(path.relative_to(out)), "sha256": digest,
                       "images": len(synthetic.read_manifest(folder))})
    atomic_write_json(out / "index.json", {
        "format": FORMAT, "data": data_config, "class_names": dataset.class_names,
        "image_size": dataset.image_size, "channels": dataset.channels, "cycles": cycles,
        "accumulate": accumulate, "shards": shards,
    })
    return out


def read_index(dataset_dir: str | Path) -> dict[str, Any]:
    path = Path(dataset_dir) / "index.json"
    if not path.exists():
        raise GalotError(f"{dataset_dir}: no exported dataset here (index.json missing); finish at least one "
                         "cycle of the experiment with `galot run`, or `dvc pull` its dataset")
    index = read_checked_json(path, "dataset index", "`dvc pull` the dataset again")
    if not isinstance(index, dict) or index.get("format") not in _READABLE:
        got = index.get("format") if isinstance(index, dict) else index
        raise GalotError(f"{path}: unknown dataset format {show(got)} (expected {FORMAT}); "
                         "rerun `galot run` to export the dataset again")
    shards = index.get("shards")
    if not isinstance(shards, list):
        raise bad_file(path, "'shards'", "must be a list", "`dvc pull` the dataset again")
    for k, shard in enumerate(shards):
        ok = isinstance(shard, dict) and isinstance(shard.get("cycle"), int) and \
            synthetic.safe_relative(shard.get("file")) and isinstance(shard.get("sha256"), str)
        if not ok:
            raise bad_file(path, f"'shards'[{k}]", "must be {cycle, file (a path inside the dataset folder), sha256}",
                           "`dvc pull` the dataset again")
    return index


MEMBER_MAX_BYTES = 64 << 20  # one PNG of at most DEFAULT_MAX_PIXELS RGB pixels, uncompressed, fits


def check_tar_headers(path: Path) -> None:
    """Refuse a tar whose headers declare a member larger than the file (or than MEMBER_MAX_BYTES).

    Runs over the raw 512-byte headers before ``tarfile`` reads anything, since ``tarfile``
    itself reads whole PAX/GNU headers and members into memory at their declared size: a
    10 KB file declaring an 8 GiB member would otherwise allocate 8 GiB.
    """
    total = path.stat().st_size
    with open(path, "rb") as f:
        offset = 0
        while offset + 512 <= total:
            header = f.read(512)
            if header.count(0) == 512:
                return  # end-of-archive marker
            try:
                size = tarfile.nti(header[124:136])
                if size < 0:
                    raise tarfile.HeaderError("negative size")
            except tarfile.HeaderError:
                raise GalotError(f"{path}: shard is unreadable (bad header at byte {offset}); `dvc pull` it again") \
                    from None
            offset += 512
            if size > min(MEMBER_MAX_BYTES, total - offset):
                raise GalotError(f"{path}: shard member at byte {offset - 512} declares {size} bytes (the file has "
                                 f"{total - offset} left, the limit is {MEMBER_MAX_BYTES}); `dvc pull` it again")
            offset += -(-size // 512) * 512
            f.seek(offset)


def read_shard(path: str | Path) -> list[tuple[synthetic.ManifestEntry, bytes]]:
    """The (manifest entry, PNG bytes) pairs of a shard, each checked against its hash."""
    path = Path(path)
    if not path.exists():
        raise GalotError(f"{path}: shard missing; `dvc pull` the dataset or rerun the experiment to export it")
    check_tar_headers(path)
    try:
        with tarfile.open(path, mode="r") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    except (tarfile.TarError, OSError) as e:
        raise GalotError(f"{path}: shard is unreadable ({e.__class__.__name__}); `dvc pull` it again") from None
    try:
        entries = _shard_entries(files, path)
    except UnicodeDecodeError:
        raise GalotError(f"{path}: a manifest entry in the shard is not UTF-8; `dvc pull` it again") from None
    if entries is None:
        raise GalotError(f"{path}: shard has samples without their .json manifest entry; `dvc pull` it again")
    out = []
    for e, data, cls in entries:
        if data is None or hashlib.sha256(data).hexdigest() != e.sha256 or \
                (cls is not None and cls.decode("ascii", "replace").strip() != str(e.label)):
            raise GalotError(f"{path}: {e.file} is missing or altered; `dvc pull` the dataset again")
        out.append((e, data))
    return out


def _shard_entries(files: dict[str, bytes],
                   path: Path) -> list[tuple[synthetic.ManifestEntry, bytes | None, bytes | None]] | None:
    """(entry, PNG, .cls) per sample, each entry validated; None when a sample has no .json entry."""
    if "manifest.jsonl" in files:  # format 1: one manifest, PNGs under their original names
        entries = synthetic.parse_manifest(files["manifest.jsonl"].decode("utf-8"), f"{path}:manifest.jsonl")
        return [(e, files.get(e.file), None) for e in entries]
    keys = sorted({name.rsplit(".", 1)[0] for name in files})
    if any(f"{k}.json" not in files for k in keys):
        return None
    out = []
    for k in keys:
        entry = synthetic.parse_manifest(files[f"{k}.json"].decode("utf-8"), f"{path}:{k}.json")
        if len(entry) != 1:
            raise GalotError(f"{path}: {k}.json must hold one manifest entry; `dvc pull` the shard again")
        out.append((entry[0], files.get(f"{k}.png"), files.get(f"{k}.cls")))
    return out


def load_training_set(dataset_dir: str | Path, dataset: Dataset,
                      up_to_cycle: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Real labelled images (by pool index) ∪ the exported synthetic images, as uint8 + labels.

    ``up_to_cycle`` restricts both to what the experiment had after that cycle (default:
    everything exported). Returns the images, labels and counts {"real", "generated"}.
    """
    dataset_dir = Path(dataset_dir)
    index = read_index(dataset_dir)
    if index["class_names"] != dataset.class_names or index["image_size"] != dataset.image_size:
        raise GalotError(f"{dataset_dir}: exported for classes {index['class_names'][:3]}… at "
                         f"{index['image_size']} px, but data.* now loads a different dataset; use the same data "
                         "section as the experiment")
    path = dataset_dir / "real.json"
    real = read_checked_json(path, "real selections", "`dvc pull` the dataset again")
    if isinstance(real, dict) and real.get("pool_size") != len(dataset.pool):
        raise GalotError(f"{dataset_dir}: real selections index a pool of {show(real.get('pool_size'))} images but the "
                         f"dataset's pool has {len(dataset.pool)}; use the same data section as the experiment")
    real = check_pool(real, path, len(dataset.pool), dataset.num_classes)  # pool.json's shape, checked the same way
    last = up_to_cycle if up_to_cycle is not None else max(index["cycles"], default=0)
    keep = [(i, y) for i, y, c in zip(real["labelled"], real["labels"], real["cycles"]) if c <= last]
    idx = torch.tensor([i for i, _ in keep], dtype=torch.int64)
    real_x = dataset.pool.images[idx]
    real_y = torch.tensor([y for _, y in keep], dtype=torch.int64)
    train_cycles = range(1, last + 1) if index["accumulate"] else [last]
    shards = {s["cycle"]: s for s in index["shards"]}
    gen_x, gen_y = [], []
    for c in train_cycles:
        if c not in shards:
            continue
        x, y = synthetic.decode_entries(read_shard(dataset_dir / shards[c]["file"]), dataset.image_size,
                                        dataset.channels)
        gen_x.append(x)
        gen_y.append(y)
    gx = torch.cat(gen_x) if gen_x else torch.zeros((0, dataset.channels, dataset.image_size, dataset.image_size),
                                                    dtype=torch.uint8)
    gy = torch.cat(gen_y) if gen_y else torch.zeros(0, dtype=torch.int64)
    return torch.cat([real_x, gx]), torch.cat([real_y, gy]), {"real": len(real_y), "generated": len(gy)}
