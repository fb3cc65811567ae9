"""Write the list of images a model was trained on, for `pneumo convert --training-list`.

    python models/training/list_training_images.py --data ../shared/data/kermany224/train \\
        --out build/training_images.txt.gz
    # the shipped version 1: write its list beside its manifest and name it there
    python models/training/list_training_images.py --data ../shared/data/kermany224/train \\
        --add-to models/pneumonia/1

The training images are every image under --data/NORMAL and --data/PNEUMONIA that is not in the
validation split (--split, as models/training/train.py drew it), one dataset-relative name per
line (`NORMAL/IM-0115-0001.jpeg`), sorted; gzipped when the name ends in .gz, with no time stamp,
so the same data always gives the same bytes. `pneumo evaluate` matches these names by file name
and says when it is shown the model's own training images.

--add-to writes the list into an existing version folder and adds it to that version's
manifest (`training_images`, and its sha256 and size under `files`), as `pneumo convert
--training-list` does for a new version: for a version converted before the option existed.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.repository.manifest import (
    MANIFEST_NAME,
    TRAINING_LISTS,
    Manifest,
    parse_training_list,
    read_manifest,
    verify_files,
)
from pneumo_onnx.engine.repository.sections import FileEntry, TrainingImages
from pneumo_onnx.engine.runtime.listing import list_images

MODELS = Path(__file__).resolve().parents[1]


def training_names(data: Path, split: Path) -> list[str]:
    """Every labelled image under `data` not listed in the validation split, sorted."""
    contract = Contract()
    held_out = {line.strip() for line in split.read_text().splitlines() if line.strip()}
    names = [
        f"{label}/{p.name}"
        for label in (contract.negative_label, contract.positive_label)
        for p in list_images(data / label, recursive=False)
    ]
    missing = held_out - set(names)
    if missing:
        raise SystemExit(
            f"{split} lists {len(missing)} image(s) not in {data}, e.g. {min(missing)}"
        )
    return sorted(set(names) - held_out)


def encode(names: list[str], gz: bool) -> bytes:
    text = "".join(f"{name}\n" for name in names).encode("utf-8")
    return gzip.compress(text, compresslevel=9, mtime=0) if gz else text


def add_to_version(version_dir: Path, data: bytes) -> Path:
    """Write the gzipped list into `version_dir` and name it in its manifest."""
    manifest = read_manifest(version_dir)
    problems = verify_files(version_dir, manifest)
    if problems:
        raise SystemExit(f"{version_dir} does not match its manifest: {'; '.join(problems)}")
    name = TRAINING_LISTS[1]
    target = version_dir / name
    target.write_bytes(data)
    count = len(parse_training_list(data, name))
    # Two entries added to the JSON as it is, the rest kept byte for byte (a round trip through
    # Manifest would restate an old contract in today's schema); checked by the reader.
    raw = json.loads((version_dir / MANIFEST_NAME).read_text())
    raw["training_images"] = TrainingImages(name, count).to_dict()
    raw["files"][name] = FileEntry.of(data, {"kind": "training list", "images": count}).to_dict()
    Manifest.from_dict(raw)
    (version_dir / MANIFEST_NAME).write_text(json.dumps(raw, indent=2) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="kermany224/train")
    parser.add_argument("--split", type=Path, default=MODELS / "validation_split.txt")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the list here (.gz: gzipped)")
    where.add_argument("--add-to", type=Path, metavar="VERSION_DIR", help="see above")
    args = parser.parse_args()
    names = training_names(args.data, args.split)
    if args.out is not None:
        args.out.write_bytes(encode(names, args.out.name.endswith(".gz")))
        target = args.out
    else:
        target = add_to_version(args.add_to, encode(names, gz=True))
    print(f"wrote {target}: {len(names)} training images, {target.stat().st_size} bytes")


if __name__ == "__main__":
    main()
