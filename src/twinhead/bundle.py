"""The exported bundle's layout and its integrity manifest.

A bundle folder holds:
  model.safetensors  the weights (no pickle)
  vocab.json         words, chars, intents, tags
  config.json        format, model config, preprocessing settings, vocabulary sizes, labels, training info,
                     calibration ({"temperature": T, "fitted_on": "dev" or null}: the intent logits are
                     divided by T, see twinhead.calibration)
  model.onnx         optional (export.onnx: true): the same network as an ONNX graph for ONNX Runtime
                     (twinhead.fast.build_onnx); config.json's "onnx" names it
  manifest.json      written last by export: the sha256 and size in bytes of every other file

`verify_bundle` reads the manifest before any other file and refuses, with one error naming the file, a
bundle with a file missing, edited (hash or size differ), or added after export, and a garbled manifest.
It then checks config.json's required fields. The manifest makes accidental or partial edits evident; it
is not a signature: whoever rewrites it along with the files is not detected.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from twinhead import fileio
from twinhead.errors import TwinheadError

# /2: integrity moved from config.json's "sha256" to manifest.json; /3: "calibration" (the intent temperature)
BUNDLE_FORMAT = "twinhead-bundle/3"
MANIFEST_FORMAT = "twinhead-manifest/1"
WEIGHTS, VOCAB, CONFIG, MANIFEST = "model.safetensors", "vocab.json", "config.json", "manifest.json"
ONNX = "model.onnx"  # optional
REQUIRED_FILES = (WEIGHTS, VOCAB, CONFIG)
TASKS = ("intent", "tags")  # the heads a bundle may have been trained for (config.json "tasks")
# Fields of config.json the loader relies on, and their JSON types; the contents of model_config and
# preprocess are validated where they are used.
REQUIRED_FIELDS: dict[str, type] = {"format": str, "model_config": dict, "preprocess": dict, "sizes": dict,
                                    "calibration": dict}
VOCAB_KEYS = ("words", "chars", "intents", "tags")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REEXPORT = "re-export the model"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path) -> dict:
    """Record the sha256 and size of every file in `folder` in manifest.json; call it after all other files."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name == MANIFEST:
            continue
        if not path.is_file():
            raise TwinheadError(f"{path}: a bundle holds only files")
        files[path.name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    manifest = {"format": MANIFEST_FORMAT, "files": files}
    fileio.write_json(folder / MANIFEST, manifest)
    return manifest


def _type_name(t: type) -> str:
    return {str: "a string", dict: "an object", int: "an integer", list: "a list"}[t]


def read_manifest(folder: Path) -> dict[str, dict]:
    """The manifest's {file name: {"sha256", "size"}}; every way it can be missing or garbled is an error."""
    path = folder / MANIFEST
    if not path.is_file():
        if not any(folder.iterdir()) or not (folder / CONFIG).exists():
            raise TwinheadError(f"{folder}: not a twinhead bundle (no {MANIFEST}); run the export stage first")
        raise TwinheadError(f"{path}: missing, so the bundle's files cannot be checked (exported by an older "
                            f"twinhead, or altered); {REEXPORT}")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise TwinheadError(f"{path}: cannot read the bundle manifest: {e.strerror}") from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise TwinheadError(f"{path}: garbled bundle manifest (not JSON: {str(e)[:200]}); {REEXPORT}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise TwinheadError(f"{path}: garbled bundle manifest (format {got!r}, expected {MANIFEST_FORMAT!r}); "
                            f"{REEXPORT}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise TwinheadError(f"{path}: garbled bundle manifest (field 'files' must be an object); {REEXPORT}")
    for name, entry in files.items():
        plain = name not in ("", ".", "..", MANIFEST) and "/" not in name and "\\" not in name
        ok = (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and SHA256_RE.match(entry["sha256"])
              and type(entry.get("size")) is int and entry["size"] >= 0)
        if not plain or not ok:
            raise TwinheadError(f"{path}: garbled bundle manifest (entry {name!r} must be a file name with a "
                                f"sha256 hex digest and a size); {REEXPORT}")
    for name in REQUIRED_FILES:
        if name not in files:
            raise TwinheadError(f"{path}: does not list {name}; {REEXPORT}")
    return files


def check_files(folder: Path, files: dict[str, dict]) -> None:
    """Every listed file is there with its recorded size and sha256, and nothing else is in the folder."""
    for path in sorted(folder.iterdir()):
        if path.name != MANIFEST and path.name not in files:
            raise TwinheadError(f"{path}: not part of the bundle (not listed in {MANIFEST}: added after export); "
                                f"remove it or {REEXPORT}")
    for name, entry in files.items():
        path = folder / name
        if not path.exists():
            raise TwinheadError(f"{path}: missing from the bundle (listed in {MANIFEST}); {REEXPORT}")
        if not path.is_file():
            raise TwinheadError(f"{path}: not a file (listed in {MANIFEST} as one); {REEXPORT}")
        size = path.stat().st_size
        if size != entry["size"]:
            raise TwinheadError(f"{path}: edited after export (size {size} bytes, {entry['size']} recorded in "
                                f"{MANIFEST}); {REEXPORT}")
        try:
            digest = sha256_file(path)
        except OSError as e:
            raise TwinheadError(f"{path}: cannot read: {e.strerror}") from e
        if digest != entry["sha256"]:
            raise TwinheadError(f"{path}: edited after export (its sha256 differs from the one recorded in "
                                f"{MANIFEST}); {REEXPORT}")


def check_config(cfg: Any, path: Path) -> dict:
    """config.json has the fields the loader relies on, with the right JSON types and format."""
    if not isinstance(cfg, dict):
        raise TwinheadError(f"{path}: must hold a JSON object, not {type(cfg).__name__}")
    for field, typ in REQUIRED_FIELDS.items():
        if field not in cfg:
            raise TwinheadError(f"{path}: missing field {field!r}")
        if not isinstance(cfg[field], typ):
            raise TwinheadError(f"{path}: field {field!r} must be {_type_name(typ)}, not "
                                f"{type(cfg[field]).__name__}")
        # The format first: an older bundle lacks newer fields, and its format says why.
        if field == "format" and cfg["format"] != BUNDLE_FORMAT:
            raise TwinheadError(f"{path}: bundle format {cfg['format']!r}, expected {BUNDLE_FORMAT!r}; {REEXPORT} "
                                "with this version of twinhead")
    tasks = cfg.get("tasks", list(TASKS))
    if not isinstance(tasks, list) or not tasks or not set(tasks) <= set(TASKS):
        raise TwinheadError(f"{path}: field 'tasks' must be a non-empty list of {', '.join(TASKS)}, got {tasks!r}")
    sizes = cfg["sizes"]
    if set(sizes) != set(VOCAB_KEYS) or any(type(v) is not int for v in sizes.values()):
        raise TwinheadError(f"{path}: field 'sizes' must map {', '.join(VOCAB_KEYS)} to integers, got {sizes}")
    read_temperature(cfg, path)
    if read_onnx_entry(cfg, path) is not None and not (path.parent / ONNX).is_file():
        raise TwinheadError(f"{path}: names {ONNX}, which the bundle lacks; {REEXPORT}")
    return cfg


def read_temperature(cfg: dict, path: Path) -> float:
    """config.json's calibration temperature: a finite number > 0."""
    t = cfg["calibration"].get("temperature")
    if type(t) not in (int, float) or not math.isfinite(t) or t <= 0:
        raise TwinheadError(f"{path}: field 'calibration.temperature' must be a number > 0, got {t!r}")
    return float(t)


def read_onnx_entry(cfg: dict, path: Path) -> dict | None:
    """config.json's "onnx" record ({"file": "model.onnx", "opset": n, ...}), or None when the bundle has none.
    verify_bundle has checked that the file is there."""
    entry = cfg.get("onnx")
    if entry is None:
        return None
    if not isinstance(entry, dict) or entry.get("file") != ONNX:
        raise TwinheadError(f"{path}: field 'onnx' must be an object naming the file {ONNX!r}, got {entry!r}")
    return entry


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise TwinheadError(f"{path}: cannot read: {e.strerror}") from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TwinheadError(f"{path}: not valid JSON: {str(e)[:200]}") from e


def read_vocab_lists(folder: Path) -> dict[str, list[str]]:
    path = Path(folder) / VOCAB
    lists = _read_json(path)
    if not isinstance(lists, dict) or set(lists) != set(VOCAB_KEYS):
        raise TwinheadError(f"{path}: must be an object with the lists {', '.join(VOCAB_KEYS)}")
    for key in VOCAB_KEYS:
        if not isinstance(lists[key], list) or not all(isinstance(s, str) for s in lists[key]):
            raise TwinheadError(f"{path}: {key!r} must be a list of strings")
    return lists


def verify_bundle(folder: str | Path) -> dict:
    """Check the bundle in `folder` against its manifest, then return its checked config.json."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise TwinheadError(f"{folder}: not a twinhead bundle ({what}); run the export stage first")
    check_files(folder, read_manifest(folder))
    return check_config(_read_json(folder / CONFIG), folder / CONFIG)
