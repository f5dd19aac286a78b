"""Turn a raw dataset into per-split tables: text, tokens, gold tags, intent, and what the model reads.

Every input format goes through one TextPipeline (twinhead.text), the same one the predictor rebuilds
from the bundle: raw text is tokenized by spaCy; pre-tokenized BIO lines are joined by single spaces and
tokenized the same way, each tag following its characters. Each split keeps the text, the pipeline's
tokens, their character offsets and the gold tags on them (every metric is computed against these),
beside `keep` (positions kept after stop-word removal), `words` (the normalized kept tokens the model
reads) and `word_tags` (their tags). The stop-word rule is learned from train only and saved in
meta.json, so prediction applies exactly the same rule.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from twinhead import fileio
from twinhead.errors import DataError
from twinhead.params import Name, section
from twinhead.readers import (
    SPLITS,
    DataConfig,
    Example,
    SplitReport,
    cross_validation_split,
    read_dataset,
    train_subset,
)
from twinhead.text import TextPipeline, bio_to_spans, removable_stopwords, spans_to_bio


@section
class PreprocessConfig:
    lang: Name = "en"  # spaCy language for spacy.blank(lang)
    lowercase: bool = True  # lowercase the words the model reads
    remove_stopwords: bool = False  # drop spaCy stop words (their tags go with them); off: measured better
    keep_entity_stopwords: bool = True  # ...except words seen inside training entities


def entity_words(examples: list[Example]) -> set[str]:
    words = set()
    for ex in examples:
        for s, e, _ in bio_to_spans(ex.tags):
            words.update(t.lower() for t in ex.tokens[s:e])
    return words


def stopword_rule(cfg: PreprocessConfig, train: list[Example], pipe: TextPipeline) -> list[str]:
    """The removable stop words, from spaCy's list and the train split only."""
    if not cfg.remove_stopwords:
        return []
    keep = entity_words(train) if cfg.keep_entity_stopwords else set()
    return sorted(removable_stopwords(pipe.nlp, keep))


def through_pipeline(examples: list[Example], pipe: TextPipeline) -> list[Example]:
    """Pre-tokenized examples re-tokenized by the pipeline (raw-text ones already were, by the reader)."""
    out = []
    for ex in examples:
        if ex.text is None:
            text, tokens, offsets, tags = pipe.from_tokens(ex.tokens, ex.tags)
            ex = Example(tokens, tags, ex.intent, ex.source, text=text, offsets=offsets)
        out.append(ex)
    return out


def to_frame(examples: list[Example], pipe: TextPipeline) -> pd.DataFrame:
    rows = []
    for ex in examples:
        kept, words = pipe.model_words(ex.tokens)
        rows.append({
            "source": ex.source,
            "text": ex.text,
            "intent": ex.intent,
            "tokens": ex.tokens,
            "tags": ex.tags,
            "offsets": ex.offsets,
            "keep": kept,
            "words": words,
            # valid BIO again if a removed word began an entity (its I- becomes B-), as the CRF requires
            "word_tags": spans_to_bio(len(kept), bio_to_spans([ex.tags[i] for i in kept])),
        })
    return pd.DataFrame(rows, columns=["source", "text", "intent", "tokens", "tags", "offsets",
                                       "keep", "words", "word_tags"])


def slot_types(tags_col) -> set[str]:
    return {t[2:] for tags in tags_col for t in tags if t != "O"}


def data_report(frames: dict[str, pd.DataFrame], reports: dict[str, SplitReport]) -> dict:
    train_intents = set(frames["train"]["intent"])
    train_slots = slot_types(frames["train"]["tags"])
    out = {}
    for split, df in frames.items():
        n_tokens = int(df["tokens"].map(len).sum())
        intents = set(df["intent"])
        slots = slot_types(df["tags"])
        out[split] = {
            "sentences": len(df),
            "tokens": n_tokens,
            "removed_stopwords": n_tokens - int(df["keep"].map(len).sum()),
            "skipped_lines": len(reports[split].skipped),
            "labels": len(intents),
            "slot_types": len(slots),
            "labels_unseen_in_train": len(intents - train_intents),
            "slot_types_unseen_in_train": len(slots - train_slots),
        }
    return out


def preprocess(raw: str | Path, data: DataConfig | None, cfg: PreprocessConfig, seed: int):
    """Read the raw dataset and build the per-split frames, the meta record and the data report.

    Args:
        raw: dataset folder (BIO folder or JSONL format).
        data: the `data` params section (format, on_error, dev_fraction, cv_folds, cv_fold,
            train_fraction); None: defaults.
        cfg: preprocessing settings.
        seed: seeds the dev hold-out for JSONL data without dev.jsonl, the cross-validation folds and the
            train share.
    """
    data = data or DataConfig(path=str(raw))
    splits, reports = read_dataset(raw, data.format, cfg.lang, data.on_error, data.dev_fraction, seed)
    if data.cv_folds:
        splits = cross_validation_split(splits, data.cv_folds, data.cv_fold, seed)
    splits["train"] = train_subset(splits["train"], data.train_fraction, seed)
    tokenizer = TextPipeline(cfg.lang, cfg.lowercase)
    splits = {s: through_pipeline(splits[s], tokenizer) for s in SPLITS}
    pipe = TextPipeline(cfg.lang, cfg.lowercase, stopword_rule(cfg, splits["train"], tokenizer))
    frames = {s: to_frame(splits[s], pipe) for s in SPLITS}
    meta = {**pipe.settings(), "remove_stopwords": cfg.remove_stopwords}
    report = data_report(frames, reports)
    skipped = {s: r.skipped for s, r in reports.items() if r.skipped}
    return frames, meta, report, skipped


def write_outputs(out_dir: str | Path, frames: dict[str, pd.DataFrame], meta: dict, skipped: dict) -> None:
    out_dir = Path(out_dir)
    with fileio.atomic_dir(out_dir) as tmp:
        for split, df in frames.items():
            df.to_parquet(tmp / f"{split}.parquet", engine="pyarrow", index=False)
        fileio.write_json(tmp / "meta.json", meta)
        fileio.write_json(tmp / "skipped.json", skipped)


def load_split(processed: str | Path, split: str) -> pd.DataFrame:
    path = Path(processed) / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"no {split} split here: the preprocess stage writes it (`dvc repro preprocess`)", str(path))
    return pd.read_parquet(path, engine="pyarrow")


def dataset_identity(raw: Path) -> dict:
    """Name, path and digest of the dataset: the md5 in its DVC pointer file when there is one."""
    import hashlib

    import yaml

    pointer = raw.parent / f"{raw.name}.dvc"
    if pointer.exists():
        with open(pointer, encoding="utf-8") as fh:
            outs = (yaml.safe_load(fh) or {}).get("outs") or [{}]
        if outs[0].get("md5"):
            return {"name": raw.name, "path": str(raw), "digest": outs[0]["md5"], "digest_source": "dvc"}
    h = hashlib.md5()
    for f in sorted(p for p in raw.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(raw)).encode())
        h.update(f.read_bytes())
    return {"name": raw.name, "path": str(raw), "digest": h.hexdigest(), "digest_source": "md5 of files"}
