"""Readers for the two input formats; every malformed line gets an error naming file and line.

1. BIO folder: {train,dev,test}/seq.in (tokens), seq.out (BIO tags), label (intent), line-aligned.
2. JSONL: {train,dev,test}.jsonl, one {"text", "label", "entities": [{"start","end","label"}]} a line.
   If dev.jsonl is absent, a seeded fraction of train is held out.

With on_error="skip", a malformed line is skipped and counted instead of raising.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from twinhead.errors import DataError, TwinheadError
from twinhead.params import Name, NonNegInt, section
from twinhead.text import bio_error, get_nlp, spans_to_bio, text_problem, tokenize

SPLITS = ("train", "dev", "test")
BIO_FILES = ("seq.in", "seq.out", "label")


@section
class DataConfig:
    path: Name  # dataset folder (no default: params.yaml names it)
    format: Literal["auto", "bio", "jsonl"] = "auto"  # auto: detected from the folder's files
    on_error: Literal["raise", "skip"] = "raise"  # raise: stop at the first malformed line; skip: count it
    dev_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1  # JSONL without dev.jsonl: share of train held out
    # k-fold cross-validation on train+dev (k >= 3; 0: off): fold cv_fold is the evaluated split, the next
    # fold the dev split, the rest train; the dataset's own test split is not used
    cv_folds: NonNegInt = 0
    cv_fold: NonNegInt = 0  # which fold is held out, 0 .. cv_folds-1
    # < 1: train on a seeded share of the train split, that share of each label's sentences (at least one),
    # for learning curves and convergence checks on less data; dev and test stay whole
    train_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0

    def __post_init__(self):
        if self.cv_folds and self.cv_folds < 3:
            raise ValueError(f"cv_folds must be 0 (off) or at least 3 (one fold evaluated, one dev, the rest "
                             f"train), not {self.cv_folds}")
        if self.cv_folds and self.cv_fold >= self.cv_folds:
            raise ValueError(f"cv_fold must be below cv_folds ({self.cv_folds}), not {self.cv_fold}")


@dataclass
class Example:
    tokens: list[str]
    tags: list[str]
    intent: str
    source: str  # "file:line" of the example
    text: str | None = None  # raw text (JSONL input); None for pre-tokenized input
    offsets: list[int] | None = None  # character offset of each token in `text`


@dataclass
class SplitReport:
    skipped: list[str] = field(default_factory=list)  # "file:line: reason"


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (BOM and CRLF tolerated); invalid UTF-8 names its line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise DataError("file not found", str(path)) from e
    except OSError as e:
        raise DataError(f"cannot read file: {e.strerror}", str(path)) from e
    if not raw.strip():
        raise DataError("file is empty", str(path))
    if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 BOM
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"invalid UTF-8 (byte {raw[e.start]:#04x})", str(path), line) from e
    # Split on \n only: str.splitlines() also splits on \x0b, \x1c, \u2028..., which would
    # misalign line-aligned files.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


class _Collector:
    def __init__(self, on_error: str):
        if on_error not in ("raise", "skip"):
            raise TwinheadError(f"params: data.on_error must be 'raise' or 'skip', not {on_error!r}")
        self.on_error = on_error
        self.report = SplitReport()

    def bad(self, err: DataError) -> None:
        if self.on_error == "raise":
            raise err
        self.report.skipped.append(str(err))


def read_bio_split(folder: Path, on_error: str = "raise") -> tuple[list[Example], SplitReport]:
    paths = [folder / name for name in BIO_FILES]
    sents, tagl, labels = (read_lines(p) for p in paths)
    if not (len(sents) == len(tagl) == len(labels)):
        raise DataError(
            f"line counts differ: seq.in has {len(sents)}, seq.out {len(tagl)}, label {len(labels)}",
            str(folder),
        )
    col = _Collector(on_error)
    out = []
    for i, (s, t, lab) in enumerate(zip(sents, tagl, labels), start=1):
        tokens, tags, intent = s.split(), t.split(), lab.strip()
        if not tokens:
            col.bad(DataError("empty sentence", str(paths[0]), i))
            continue
        if len(tokens) != len(tags):
            col.bad(DataError(f"{len(tokens)} tokens in seq.in but {len(tags)} tags", str(paths[1]), i))
            continue
        err = bio_error(tags)
        if err:
            col.bad(DataError(err, str(paths[1]), i))
            continue
        if not intent or len(lab.split()) != 1:
            col.bad(DataError(f"label must be one non-empty word, got {lab!r}", str(paths[2]), i))
            continue
        out.append(Example(tokens, tags, intent, f"{paths[0]}:{i}"))
    return out, col.report


def parse_json_line(line: str, path: Path, i: int):
    """json.loads with every failure (syntax, nesting too deep, huge numbers) as a DataError."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"bad JSON: {e.msg} (column {e.colno})", str(path), i) from e
    except (ValueError, RecursionError) as e:
        raise DataError(f"bad JSON: {type(e).__name__}: {str(e)[:200]}", str(path), i) from e


def _parse_jsonl_line(line: str, path: Path, i: int, nlp) -> Example:
    obj = parse_json_line(line, path, i)
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", str(path), i)
    text, label, ents = obj.get("text"), obj.get("label"), obj.get("entities", [])
    if not isinstance(text, str):
        raise DataError("field 'text' must be a string", str(path), i)
    if not text.strip():
        raise DataError("field 'text' is empty", str(path), i)
    problem = text_problem(text)
    if problem:
        raise DataError(f"field 'text': {problem}", str(path), i)
    if not isinstance(label, str) or not label.strip() or len(label.split()) != 1:
        raise DataError(f"field 'label' must be one non-empty word, got {label!r}", str(path), i)
    if not isinstance(ents, list):
        raise DataError("field 'entities' must be a list", str(path), i)
    tokens, offsets = tokenize(nlp, text)
    starts = {o: k for k, o in enumerate(offsets)}
    ends = {o + len(t): k for k, (o, t) in enumerate(zip(offsets, tokens))}
    spans = []
    for j, ent in enumerate(ents):
        where = f"entities[{j}]"
        if not isinstance(ent, dict):
            raise DataError(f"{where} must be an object", str(path), i)
        s, e, lab = ent.get("start"), ent.get("end"), ent.get("label")
        if not (isinstance(s, int) and isinstance(e, int)) or isinstance(s, bool) or isinstance(e, bool):
            raise DataError(f"{where}: 'start' and 'end' must be integers", str(path), i)
        if not isinstance(lab, str) or not lab or any(c.isspace() for c in lab):
            raise DataError(f"{where}: 'label' must be a non-empty string without spaces", str(path), i)
        if not 0 <= s < e <= len(text):
            raise DataError(f"{where}: span [{s}, {e}) is outside the text (length {len(text)}) "
                            "or empty/reversed", str(path), i)
        if s not in starts or e not in ends:
            raise DataError(f"{where}: span [{s}, {e}) {text[s:e]!r} does not fall on token boundaries "
                            f"(tokens: {tokens})", str(path), i)
        spans.append((starts[s], ends[e] + 1, lab, j))
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if b[0] < a[1]:
            raise DataError(f"entities[{a[3]}] and entities[{b[3]}] overlap", str(path), i)
    tags = spans_to_bio(len(tokens), [(s, e, t) for s, e, t, _ in spans])
    return Example(tokens, tags, label.strip(), f"{path}:{i}", text=text, offsets=offsets)


def read_jsonl_split(path: Path, lang: str, on_error: str = "raise") -> tuple[list[Example], SplitReport]:
    nlp = get_nlp(lang)
    col = _Collector(on_error)
    out = []
    for i, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue  # blank lines are allowed in JSONL
        try:
            out.append(_parse_jsonl_line(line, path, i, nlp))
        except DataError as err:
            col.bad(err)
    if not out and not col.report.skipped:
        raise DataError("no examples", str(path))
    return out, col.report


def detect_format(root: Path) -> str:
    if (root / "train.jsonl").exists():
        return "jsonl"
    if (root / "train" / "seq.in").exists():
        return "bio"
    raise DataError(
        "no dataset found: expected train.jsonl (JSONL format) or train/seq.in (BIO folder format)",
        str(root),
    )


def cross_validation_split(data: dict[str, list[Example]], folds: int, fold: int, seed: int
                           ) -> dict[str, list[Example]]:
    """train+dev pooled and dealt into `folds` seeded folds of near-equal size: fold `fold` becomes test,
    the next one dev, the others train. The same seed gives the same folds for every `fold`, so the k
    runs of one cross-validation hold out each example exactly once."""
    pool = data["train"] + data["dev"]
    if len(pool) < folds:
        raise TwinheadError(f"params: data.cv_folds={folds} but train+dev hold only {len(pool)} examples")
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    of = {k: i % folds for i, k in enumerate(order)}  # example index -> its fold
    dev_fold = (fold + 1) % folds
    return {"train": [ex for k, ex in enumerate(pool) if of[k] not in (fold, dev_fold)],
            "dev": [ex for k, ex in enumerate(pool) if of[k] == dev_fold],
            "test": [ex for k, ex in enumerate(pool) if of[k] == fold]}


def train_subset(train: list[Example], fraction: float, seed: int) -> list[Example]:
    """A seeded share of `train`: round(fraction * n) of each label's n sentences, at least one, so every label
    stays; the kept sentences in their original order. `fraction` 1 returns `train` as it is."""
    if fraction >= 1:
        return train
    by_label: dict[str, list[int]] = {}
    for k, ex in enumerate(train):
        by_label.setdefault(ex.intent, []).append(k)
    rng = random.Random(seed)
    keep = set()
    for idx in by_label.values():
        rng.shuffle(idx)
        keep.update(idx[:max(1, round(len(idx) * fraction))])
    return [ex for k, ex in enumerate(train) if k in keep]


def read_dataset(
    root: str | Path,
    fmt: str = "auto",
    lang: str = "en",
    on_error: str = "raise",
    dev_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[dict[str, list[Example]], dict[str, SplitReport]]:
    """Read train/dev/test from `root` in the given format ('auto', 'bio' or 'jsonl')."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("dataset folder not found", str(root))
    if fmt == "auto":
        fmt = detect_format(root)
    if fmt not in ("bio", "jsonl"):
        raise TwinheadError(f"params: data.format must be auto, bio or jsonl, not {fmt!r}")
    data, reports = {}, {}
    for split in SPLITS:
        if fmt == "bio":
            folder = root / split
            if not folder.is_dir():
                raise DataError(f"missing split '{split}' (expected folder {split}/ with "
                                f"{', '.join(BIO_FILES)})", str(root))
            data[split], reports[split] = read_bio_split(folder, on_error)
        else:
            path = root / f"{split}.jsonl"
            if not path.exists():
                if split == "dev":
                    continue  # held out from train below
                raise DataError(f"missing split '{split}' (expected {split}.jsonl)", str(root))
            data[split], reports[split] = read_jsonl_split(path, lang, on_error)
    if "dev" not in data:
        if not 0 < dev_fraction < 1:
            raise TwinheadError("params: data.dev_fraction must be in (0, 1) when dev.jsonl is absent")
        train = data["train"]
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_dev = max(1, round(len(train) * dev_fraction))
        if n_dev >= len(train):
            raise DataError(f"too few training examples ({len(train)}) to hold out a dev split", str(root))
        dev_idx = set(order[:n_dev])
        data["dev"] = [ex for k, ex in enumerate(train) if k in dev_idx]
        data["train"] = [ex for k, ex in enumerate(train) if k not in dev_idx]
        reports["dev"] = SplitReport()
    for split in SPLITS:
        if not data[split]:
            raise DataError(f"split '{split}' has no usable examples", str(root))
    return {s: data[s] for s in SPLITS}, {s: reports[s] for s in SPLITS}
