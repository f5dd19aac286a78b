"""The spaCy peer: spaCy's own CPU pipeline trained on twinhead's split, side by side with twinhead's defaults.

Usage (from the project root, with the project's environment):
    nice -n 10 python benchmarks/spacy_peer.py --json benchmarks/results/spacy_peer.json
    python benchmarks/spacy_peer.py --max-epochs 2 --spacy-max-steps 400          # a quick smoke run
    python benchmarks/spacy_peer.py --from-json benchmarks/results/spacy_peer.json  # the tables again
    # twinhead again (other code or params) beside an earlier spaCy run, stopping at spaCy's test accuracy:
    python benchmarks/spacy_peer.py --spacy-results OLD.json --stop-at-target --set train.threads=1 --json NEW.json
    python benchmarks/spacy_peer.py --profile --profile-threads 1      # where twinhead's training time goes

spaCy: the config `spacy init config -p textcat,ner -o efficiency` writes (spacy.cli.init_config.init_config;
no vectors), trained by spacy.cli.train.train with its default loop (eval every 200 steps on dev, patience,
max_steps) on DocBins made from the BIO files (the file's tokens; BIO -> doc.ents, the label -> one-hot
doc.cats). A logger wrapped around spaCy's console logger notes the time of every dev evaluation. The best
model (spaCy's model-best) is saved under OUT/model-best (for benchmarks/predict_speed.py --spacy-model).

twinhead: params.yaml's defaults, trained by the library's own epoch loop (twinhead.train: TrainData,
new_state, run_epoch, evaluate_frame; dev-based early stopping and plateau schedule as in train()). Only for
this benchmark, the test split is scored after each epoch, off the clock.

Both are scored on the test split with twinhead's metrics (twinhead.metrics.summary) against the same gold:
twinhead's processed test split, the file's tokens joined by spaces and tokenized by spacy.blank(lang).
spaCy reads that raw text through its own pipeline (its tokenizer is the same spacy.blank tokenizer).

Clocks start at the training call, after the data is converted (DocBins / processed frames), and include each
system's dev evaluations (and spaCy's checkpoint writes); twinhead's test evaluations are not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, only benchmarks/ is on the path

# twinhead first: it sets OpenMP's wait policy, which counts only before torch (spaCy's thinc imports it) starts
# its thread pool; with torch first, twinhead's two threads busy-wait and crawl on a loaded machine.
import twinhead  # noqa: E402, F401, I001
import spacy  # noqa: E402
import torch  # noqa: E402
from spacy.tokens import Doc, DocBin  # noqa: E402
from spacy.training import biluo_tags_to_spans, iob_to_biluo  # noqa: E402

from twinhead import fileio  # noqa: E402
from twinhead.checkpoint import build_model  # noqa: E402
from twinhead.errors import TwinheadError, run_main  # noqa: E402
from twinhead.metrics import summary  # noqa: E402
from twinhead.model import ModelConfig  # noqa: E402
from twinhead.params import BaseConfig, load_config  # noqa: E402
from twinhead.preprocess import PreprocessConfig, preprocess  # noqa: E402
from twinhead.readers import SPLITS, DataConfig, Example, read_bio_split  # noqa: E402
from twinhead.text import tags_for_spans  # noqa: E402
from twinhead.train import (  # noqa: E402
    TrainConfig,
    TrainData,
    evaluate_frame,
    new_state,
    resolve_device,
    run_epoch,
    selection_score,
    set_determinism,
)
from twinhead.vocab import VocabConfig, build_vocabs  # noqa: E402

LOGGER = "twinhead_bench.TimedConsoleLogger.v1"
TARGET_RATIO = 1 / 20  # the goal: twinhead reaches spaCy's test sentence accuracy in 1/20 of its time


# --- BIO files <-> DocBin ---

def example_doc(nlp, ex: Example, labels: list[str]) -> Doc:
    """A Doc on the example's own tokens (joined by single spaces) with its entities and one-hot cats."""
    doc = Doc(nlp.vocab, words=list(ex.tokens), spaces=[True] * (len(ex.tokens) - 1) + [False])
    doc.ents = biluo_tags_to_spans(doc, iob_to_biluo(list(ex.tags)))
    doc.cats = {lab: float(lab == ex.intent) for lab in labels}
    return doc


def to_docbin(nlp, examples: list[Example], labels: list[str]) -> DocBin:
    return DocBin(docs=(example_doc(nlp, ex, labels) for ex in examples), store_user_data=False)


def doc_bio(doc: Doc) -> list[str]:
    """BIO tags of a Doc's entities, on its tokens."""
    return [t.ent_iob_ + "-" + t.ent_type_ if t.ent_iob_ in ("B", "I") else "O" for t in doc]


def doc_intent(doc: Doc) -> str:
    return max(doc.cats, key=doc.cats.get) if doc.cats else ""


def write_docbins(raw: Path, out: Path, lang: str) -> tuple[dict[str, Path], list[str]]:
    """OUT/{train,dev}.spacy from the BIO folder; returns their paths and the intent labels (from train)."""
    nlp = spacy.blank(lang)
    splits = {s: read_bio_split(raw / s)[0] for s in ("train", "dev")}
    labels = sorted({ex.intent for ex in splits["train"]})
    paths = {}
    for split, examples in splits.items():
        paths[split] = out / f"{split}.spacy"
        to_docbin(nlp, examples, labels).to_disk(paths[split])
    return paths, labels


# --- spaCy training, timed ---

@spacy.registry.loggers(LOGGER)
def timed_console_logger(path: str, progress_bar: bool = False):
    """spaCy's console logger, plus JSON lines in `path`: the loop's start, each dev evaluation (wall and CPU
    time, step, epoch, words seen, the score and the two task scores) and the end (steps taken)."""
    # the logger the efficiency config names (spaCy finds it in spacy-legacy)
    console = spacy.registry.get("loggers", "spacy.ConsoleLogger.v1")(progress_bar=progress_bar)

    def write(rec: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), "cpu": time.process_time(), **rec}) + "\n")

    def setup(nlp, stdout=sys.stdout, stderr=sys.stderr):
        log_step, finalize = console(nlp, stdout, stderr)
        steps = 0
        write({"kind": "start"})  # spaCy sets up the logger just before its training loop

        def step(info):
            nonlocal steps
            steps += 1  # called once per optimizer step; info only on evaluation steps
            if info is not None:  # written before the console prints: when the evaluation (and save) ended
                other = info.get("other_scores") or {}
                write({"kind": "eval", "step": info["step"], "epoch": info["epoch"], "words": info["words"],
                       "score": info["score"], "cats_score": other.get("cats_score"), "ents_f": other.get("ents_f")})
            log_step(info)

        def end():
            write({"kind": "end", "steps": steps})
            finalize()

        return step, end

    return setup


def spacy_config(lang: str, log_path: Path, max_steps: int | None):
    """`spacy init config -p textcat,ner -o efficiency` (CPU), with the timing logger in place of the console."""
    from spacy.cli.init_config import init_config

    config = init_config(lang=lang, pipeline=["textcat", "ner"], optimize="efficiency", gpu=False)
    config["training"]["logger"] = {"@loggers": LOGGER, "path": str(log_path), "progress_bar": False}
    if max_steps is not None:
        config["training"]["max_steps"] = max_steps
    return config


def train_spacy(paths: dict[str, Path], out: Path, lang: str, max_steps: int | None) -> dict:
    """Train spaCy's pipeline; returns its timing record (evaluations with their times, totals)."""
    from spacy.cli.train import train

    log_path = out / "evaluations.jsonl"
    log_path.unlink(missing_ok=True)
    config = spacy_config(lang, log_path, max_steps)
    cfg_path = out / "config.cfg"
    config.to_disk(cfg_path)
    t0, c0 = time.time(), time.process_time()
    train(cfg_path, out, use_gpu=-1, overrides={"paths.train": str(paths["train"]), "paths.dev": str(paths["dev"])})
    total, total_cpu = time.time() - t0, time.process_time() - c0
    return spacy_record(log_path, config, t0, c0, total, total_cpu)


def spacy_record(log_path: Path, config, t0: float, c0: float | None, total: float, total_cpu: float | None) -> dict:
    """spaCy's timing record from the logger's lines: times from t0 (the training call), CPU times from c0
    (None: from the loop's start), the evaluations, the best one, totals and words/s."""
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    c0 = records[0]["cpu"] if c0 is None else c0
    for r in records:
        r["seconds"] = r.pop("time") - t0
        r["cpu_seconds"] = r.pop("cpu") - c0
    begin, end = records[0], records[-1]
    if end["kind"] != "end":
        raise TwinheadError(f"{log_path}: spaCy's training has not finished (no end record)")
    evals = [r for r in records if r.pop("kind") == "eval"]
    best = max(evals, key=lambda e: (e["score"], -e["step"]))  # the first evaluation with the best dev score
    last = evals[-1]
    loop = last["seconds"] - begin["seconds"]
    training = config["training"]
    return {
        "config": {k: training[k] for k in ("patience", "max_steps", "eval_frequency", "max_epochs", "dropout")}
        | {"batch_words": "compounding 100 -> 1000", "seed": config["system"]["seed"]},
        "init_seconds": begin["seconds"], "evaluations": evals, "best": best, "seconds_to_best": best["seconds"],
        "cpu_seconds_to_best": best["cpu_seconds"], "total_seconds": total,
        "total_cpu_seconds": end["cpu_seconds"] if total_cpu is None else total_cpu,
        "steps": end["steps"], "epochs": last["epoch"], "words": last["words"],
        # the loop's words up to its last evaluation, over the loop's time (its evaluations and saves included)
        "words_per_second": last["words"] / loop if loop > 0 else None,
    }


def spacy_side(path: Path, test_df) -> dict:
    """spaCy's side of an earlier run: from its --json file, or rebuilt from its OUT folder (a run stopped
    after spaCy finished: the clock from config.cfg's write, CPU time from the loop's start)."""
    if path.is_dir():
        from spacy.util import load_config

        config = load_config(path / "config.cfg", interpolate=True)
        t0 = (path / "config.cfg").stat().st_mtime  # written just before the training call
        log = path / "evaluations.jsonl"
        end = json.loads(log.read_text(encoding="utf-8").splitlines()[-1])
        sp = spacy_record(log, config, t0, None, end["time"] - t0, None)
        sp |= {"from": str(path), "model": str(path / "model-best"), "cpu_from": "the training loop's start",
               "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0))}
        sp["test"] = evaluate_spacy(path / "model-best", test_df)
        return sp
    earlier = json.loads(path.read_text(encoding="utf-8"))
    return earlier["spacy"] | {"from": str(path), "started": earlier["started"], "load_before": earlier["load_before"],
                               "load_after": earlier["load_after"], "model": earlier["spacy_model"]}


def spacy_predict(nlp, df) -> tuple[list[str], list[list[str]], int]:
    """Intents and BIO tags on the frame's tokens from spaCy reading the frame's text; also the number of
    sentences spaCy tokenized differently (their entities are carried over by character offsets)."""
    intents, tags, differ = [], [], 0
    for doc, toks, offs in zip(nlp.pipe(list(df["text"]), batch_size=256), df["tokens"], df["offsets"]):
        intents.append(doc_intent(doc))
        toks, offs = list(toks), list(offs)
        if [t.text for t in doc] == toks:
            tags.append(doc_bio(doc))
            continue
        differ += 1
        spans = [(e.start_char, e.end_char, e.label_) for e in doc.ents]
        mapped = tags_for_spans(toks, offs, spans)
        if mapped is None:  # keep the entities that fall on token boundaries
            mapped = tags_for_spans(toks, offs, [s for s in spans if tags_for_spans(toks, offs, [s]) is not None])
        tags.append(mapped)
    return intents, tags, differ


def evaluate_spacy(model_dir: Path, test_df) -> dict:
    nlp = spacy.load(model_dir)
    t0 = time.time()
    intents, tags, differ = spacy_predict(nlp, test_df)
    seconds = time.time() - t0
    scores, _, _ = summary(list(test_df["intent"]), intents, [list(t) for t in test_df["tags"]], tags)
    return {**scores, "tokenized_differently": differ, "predict_seconds": seconds}


# --- twinhead, timed per epoch ---

def train_twinhead(frames: dict, params: dict, max_epochs: int | None, stop_at: float | None = None,
                   progress: bool = False) -> dict:
    """twinhead's training loop (as twinhead.train.train, without resume files and calibration), with the
    test split scored after each epoch off the clock. Returns the per-epoch rows and totals.

    stop_at: stop after the first epoch whose test sentence accuracy reaches this (None: train.py's stopping)."""
    mcfg, tcfg, seed = params["model"], params["train"], params["base"].seed
    if max_epochs is not None:
        tcfg = dataclasses.replace(tcfg, epochs=max_epochs)
    train_df, dev_df, test_df = frames["train"], frames["dev"], frames["test"]
    vocabs = build_vocabs(train_df["words"], train_df["intent"], train_df["word_tags"],
                          min_freq=params["vocab"].min_freq)
    set_determinism(seed, tcfg)
    t0, c0 = time.time(), time.process_time()
    device = resolve_device(tcfg.device)
    model = build_model(mcfg.to_dict(), vocabs).to(device)
    data = TrainData(train_df, vocabs, mcfg, model.intent_targets)
    words = data.words
    state = new_state(model, tcfg, len(data.batches(tcfg.batch_size, torch.Generator().manual_seed(0))), seed)
    clock, cpu = time.time() - t0, time.process_time() - c0  # the training clocks: setup, epochs, dev evaluations
    setup = clock
    rows = []
    while state.epoch < tcfg.epochs and not (tcfg.patience and state.bad >= tcfg.patience):
        t, c = time.time(), time.process_time()
        run_epoch(state, data, tcfg, device, progress)
        state.epoch += 1
        t_train, c_train = time.time() - t, time.process_time() - c
        t, c = time.time(), time.process_time()
        dev, _, _ = evaluate_frame(model, vocabs, dev_df, tcfg.eval_batch_size)
        score = selection_score(dev, tcfg.early_stop_metric)
        lr = state.optimizer.param_groups[0]["lr"]
        if isinstance(state.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            state.scheduler.step(score[0])
        if score > state.best_score:
            state.best_score, state.best_epoch, state.bad = score, state.epoch, 0
        else:
            state.bad += 1
        t_dev = time.time() - t
        clock += t_train + t_dev
        cpu += c_train + time.process_time() - c
        test, _, _ = evaluate_frame(model, vocabs, test_df, tcfg.eval_batch_size)  # off the clock
        rows.append({"epoch": state.epoch, "seconds": clock, "cpu_seconds": cpu, "train_seconds": t_train,
                     "train_cpu_seconds": c_train, "dev_seconds": t_dev,
                     "words_per_second": words / t_train, "sentences_per_second": len(data) / t_train, "lr": lr,
                     **{f"dev_{k}": dev[k] for k in ("intent_accuracy", "slot_f1", "sentence_accuracy")},
                     **{f"test_{k}": test[k] for k in ("intent_accuracy", "slot_f1", "sentence_accuracy")}})
        r = rows[-1]
        print(f"twinhead epoch {r['epoch']}: {t_train:.1f} s train, {t_dev:.1f} s dev, {r['words_per_second']:.0f} "
              f"words/s | dev sentence acc {r['dev_sentence_accuracy']:.4f} | test sentence acc "
              f"{r['test_sentence_accuracy']:.4f} | {clock:.1f} s", flush=True)
        if stop_at is not None and r["test_sentence_accuracy"] >= stop_at:
            break
    best = rows[state.best_epoch - 1]
    return {"params": {"model": mcfg.to_dict(), "train": dataclasses.asdict(tcfg), "seed": seed},
            "threads": torch.get_num_threads(), "device": str(device), "train_sentences": len(data),
            "train_words": words, "setup_seconds": setup, "epochs": rows, "best_epoch": state.best_epoch,
            "best": best, "total_seconds": clock,
            "total_cpu_seconds": cpu,
            "stopped_at_target": stop_at is not None and rows[-1]["test_sentence_accuracy"] >= stop_at}


# --- where twinhead's training time goes ---

VARIANTS = {  # name: (model changes, train changes, threads, fused Adam); threads None: --profile-threads
    "defaults": ({}, {}, None, False),
    "2 threads": ({}, {}, 2, False),
    "1 thread": ({}, {}, 1, False),
    "softmax tag head (no CRF)": ({"tag_decoder": "softmax"}, {}, None, False),
    "no char CNN": ({"char_dim": 0}, {}, None, False),
    "1 LSTM layer": ({"num_layers": 1}, {}, None, False),
    "loss_rule sum": ({}, {"loss_rule": "sum"}, None, False),
    "conflict_every 0": ({}, {"conflict_every": 0}, None, False),
    "fused Adam": ({}, {}, None, True),
    "batch 128": ({}, {"batch_size": 128}, None, False),
    "batch 256": ({}, {"batch_size": 256}, None, False),
}


def profile_twinhead(frames: dict, params: dict, batches: int, variants: list[str], ops: bool,
                     threads: int | None = None) -> list[dict]:
    """Wall and CPU time per training word of the real train_step under each variant (one change from the
    defaults each), over `batches` shuffled batches after 3 warm-up steps, on `threads` torch threads unless
    the variant sets them (None: torch's default); with ops, torch.profiler's top operators (self CPU time)
    of the defaults."""
    from twinhead.train import train_step

    train_df = frames["train"]
    vocabs = build_vocabs(train_df["words"], train_df["intent"], train_df["word_tags"],
                          min_freq=params["vocab"].min_freq)
    default_threads = torch.get_num_threads()
    threads = threads or default_threads
    out = []
    for name in variants:
        mchange, tchange, variant_threads, fused = VARIANTS[name]
        mcfg = dataclasses.replace(params["model"], **mchange)
        tcfg = dataclasses.replace(params["train"], **tchange)
        torch.set_num_threads(variant_threads or threads)
        torch.manual_seed(0)
        model = build_model(mcfg.to_dict(), vocabs)
        data = TrainData(train_df, vocabs, mcfg, model.intent_targets)
        n_epoch = len(data.batches(tcfg.batch_size, torch.Generator().manual_seed(0)))
        state = new_state(model, tcfg, n_epoch, seed=0)
        if fused:  # the same optimizer (train.optimizer), groups and settings, one fused kernel for all parameters
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in state.optimizer.param_groups]
            state.optimizer = type(state.optimizer)(groups, lr=tcfg.lr, fused=True)
        model.train()
        order = data.batches(tcfg.batch_size, state.gen)[: batches + 3]
        prepared = [data.batch(idx, "cpu", tcfg.word_dropout, state.gen) for idx in order]
        for batch in prepared[:3]:  # warm-up
            train_step(state, batch, tcfg, False).floats()
        words = 0
        t, c = time.time(), time.process_time()
        for step, batch in enumerate(prepared[3:], start=1):
            words += int(batch[2].sum())
            measure = bool(tcfg.conflict_every) and step % tcfg.conflict_every == 0
            train_step(state, batch, tcfg, measure).floats()  # the epoch loop reads stats once per step too
        wall, cpu = time.time() - t, time.process_time() - c
        epoch_words = data.words
        out.append({"variant": name, "threads": torch.get_num_threads(), "batch_size": tcfg.batch_size,
                    "steps": len(prepared) - 3, "words": words, "wall_seconds": wall, "cpu_seconds": cpu,
                    "words_per_second": words / wall, "epoch_seconds": wall / words * epoch_words,
                    "epoch_cpu_seconds": cpu / words * epoch_words})
        r = out[-1]
        print(f"{name:28s} {r['threads']} thr  {r['words_per_second']:6.0f} words/s  epoch {r['epoch_seconds']:6.1f} s "
              f"(CPU {r['epoch_cpu_seconds']:6.1f} s)", flush=True)
        if ops and name == "defaults":
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for batch in prepared[3:]:
                    train_step(state, batch, tcfg, False).floats()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
    torch.set_num_threads(default_threads)
    return out


# --- the comparison ---

def first_reaching(rows: list[dict], key: str, target: float) -> dict | None:
    return next((r for r in rows if r[key] >= target), None)


def compare(spacy_res: dict, twin: dict, same_run: bool = True) -> dict:
    """twinhead's first epoch at spaCy's test sentence accuracy, and its time as a share of spaCy's time to its
    best. same_run: spaCy trained in this run; the target is judged only then (a ratio against another run's
    clock mixes two machines' loads)."""
    target = spacy_res["test"]["sentence_accuracy"]
    hit = first_reaching(twin["epochs"], "test_sentence_accuracy", target)
    out = {"target_test_sentence_accuracy": target, "target_ratio": TARGET_RATIO, "same_run": same_run,
           "twinhead_epoch": None, "twinhead_seconds": None, "ratio": None, "twinhead_cpu_seconds": None,
           "cpu_ratio": None}
    if hit:
        out.update(twinhead_epoch=hit["epoch"], twinhead_seconds=hit["seconds"],
                   ratio=hit["seconds"] / spacy_res["seconds_to_best"], twinhead_cpu_seconds=hit["cpu_seconds"],
                   cpu_ratio=hit["cpu_seconds"] / spacy_res["cpu_seconds_to_best"])
    return out


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def num(x, fmt: str = ".0f") -> str:
    return "-" if x is None else format(x, fmt)


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def format_tables(res: dict) -> str:
    sp, tw, cmp_ = res["spacy"], res["twinhead"], res["comparison"]
    per_word = tw["train_sentences"] / tw["train_words"]  # spaCy counts words only: its sentences/s are derived
    tw_time = sum(r["train_seconds"] for r in tw["epochs"])
    tw_words = sum(r["words_per_second"] * r["train_seconds"] for r in tw["epochs"]) / tw_time
    best = tw["best"]
    rows = []
    if sp:
        rate = sp["words_per_second"]
        test = sp["test"]
        rows.append([f"spaCy {res['versions']['spacy']} textcat + ner (efficiency config)",
                     pct(test["intent_accuracy"]), pct(test["slot_f1"]), pct(test["sentence_accuracy"]),
                     f"{sp['seconds_to_best']:.0f} (step {sp['best']['step']})", f"{sp['cpu_seconds_to_best']:.0f}",
                     f"{sp['total_seconds']:.0f}", num(rate), num(rate * per_word if rate else None),
                     f"{sp['steps']} steps, {sp['epochs']} epochs"])
    rows.append([f"twinhead (params.yaml defaults{''.join(', ' + x for x in tw.get('sets', []))})",
                 pct(best["test_intent_accuracy"]), pct(best["test_slot_f1"]), pct(best["test_sentence_accuracy"]),
                 f"{best['seconds']:.0f} (epoch {tw['best_epoch']})", f"{best['cpu_seconds']:.0f}",
                 f"{tw['total_seconds']:.0f}", f"{tw_words:.0f}", f"{tw_words * per_word:.0f}",
                 f"{len(tw['epochs'])} epochs"])
    lines = md_table(["system", "test intent acc", "test slot F1", "test sentence acc", "time to best dev (s)",
                      "CPU s to best", "total (s)", "train words/s", "train sentences/s", "run"], rows)
    if cmp_ and cmp_["ratio"] is None:
        lines += ["", f"twinhead did not reach spaCy's test sentence accuracy "
                  f"({pct(cmp_['target_test_sentence_accuracy'])}) in {len(tw['epochs'])} epochs."]
    elif cmp_:
        ratio = cmp_["ratio"]
        as_fraction = f" = 1/{1 / ratio:.1f}" if ratio < 1 else ""
        if cmp_.get("same_run", "--spacy-results" not in res.get("command", "")):
            verdict = "met" if ratio <= cmp_["target_ratio"] else "missed"
        else:
            verdict = "not judged: spaCy's side is from another run, under another load"
        target = pct(cmp_["target_test_sentence_accuracy"])
        lines += ["", f"twinhead first reaches spaCy's test sentence accuracy ({target})"
                  f" after epoch {cmp_['twinhead_epoch']}, at {cmp_['twinhead_seconds']:.1f} s: {ratio:.3f} of spaCy's "
                  f"time to its best{as_fraction} (target <= 1/{1 / cmp_['target_ratio']:.0f}: {verdict}); CPU time "
                  f"{cmp_['twinhead_cpu_seconds']:.1f} s, {cmp_['cpu_ratio']:.3f} of spaCy's."]
    lines += [""] + md_table(
        ["twinhead epoch", "clock (s)", "CPU (s)", "train (s)", "dev eval (s)", "words/s", "sentences/s", "lr",
         "dev sentence acc", "test intent acc", "test slot F1", "test sentence acc"],
        [[str(r["epoch"]), f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}", f"{r['train_seconds']:.1f}",
          f"{r['dev_seconds']:.1f}", f"{r['words_per_second']:.0f}", f"{r['sentences_per_second']:.0f}",
          f"{r['lr']:.2g}", pct(r["dev_sentence_accuracy"]), pct(r["test_intent_accuracy"]), pct(r["test_slot_f1"]),
          pct(r["test_sentence_accuracy"])] for r in tw["epochs"]])
    if sp:
        rows, prev = [], None
        for e in sp["evaluations"]:
            rate = (e["words"] - prev["words"]) / (e["seconds"] - prev["seconds"]) if prev else None
            rows.append([str(e["step"]), str(e["epoch"]), f"{e['seconds']:.1f}", f"{e['cpu_seconds']:.1f}", num(rate),
                         f"{e['score']:.4f}", num(e["cats_score"], ".4f"), num(e["ents_f"], ".4f")])
            prev = e
        lines += [""] + md_table(["spaCy step", "epoch", "clock (s)", "CPU (s)", "words/s since last", "dev score",
                                  "dev cats", "dev ents F"], rows)
    return "\n".join(lines)


def apply_sets(params: dict, sets: list[str]) -> dict:
    """--set SECTION.KEY=VALUE (a YAML value) on the loaded params, checked as params.yaml is."""
    import yaml

    from twinhead.params import as_dict, parse_section

    out = dict(params)
    for item in sets:
        key, sep, raw = item.partition("=")
        section, _, name = key.partition(".")
        if not sep or not name or section not in out:
            raise TwinheadError(f"--set {item!r}: expected SECTION.KEY=VALUE, SECTION one of {', '.join(out)}")
        out[section] = parse_section(type(out[section]), as_dict(out[section]) | {name: yaml.safe_load(raw)},
                                     section, "--set")
    return out


def load_frames(raw: Path, params: dict) -> dict:
    frames, _, _, _ = preprocess(raw, DataConfig(path=str(raw), format="bio"), params["preprocess"],
                                 params["base"].seed)
    return frames


def run(raw: Path, out: Path, params: dict, max_epochs: int | None, spacy_max_steps: int | None,
        stop_at_target: bool = False, spacy_results: Path | None = None, no_spacy: bool = False,
        sets: tuple[str, ...] = ()) -> dict:
    for split in SPLITS:
        if not (raw / split).is_dir():
            raise TwinheadError(f"{raw / split}: not found (a BIO dataset folder with train, dev, test; dvc pull)")
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    lang = params["preprocess"].lang
    frames = load_frames(raw, params)
    if no_spacy:
        sp = None
    elif spacy_results:  # spaCy's side from an earlier run, twinhead trained now
        sp = spacy_side(spacy_results, frames["test"])
    else:
        paths, _ = write_docbins(raw, out, lang)
        print("== spaCy ==", flush=True)
        sp = train_spacy(paths, out, lang, spacy_max_steps) | {"model": str(out / "model-best")}
        sp["test"] = evaluate_spacy(out / "model-best", frames["test"])
    print("== twinhead ==", flush=True)
    tw = train_twinhead(frames, params, max_epochs, sp["test"]["sentence_accuracy"] if stop_at_target and sp else None)
    tw["sets"] = list(sets)
    return {
        "command": " ".join(shlex.quote(a) for a in sys.argv), "started": started, "data": str(raw),
        "load_before": load_before, "load_after": os.getloadavg(), "cpus": os.cpu_count(),
        "versions": {"spacy": spacy.__version__, "torch": str(torch.__version__), "python": platform.python_version()},
        "spacy_model": sp and sp["model"], "evaluated_on": "raw text (the file's tokens joined by spaces), "
        "gold on twinhead's processed test tokens", "spacy": sp, "twinhead": tw,
        "comparison": sp and compare(sp, tw, same_run=not spacy_results),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/raw/snips", help="BIO dataset folder (default data/raw/snips)")
    ap.add_argument("--out", default="benchmarks/out/spacy_peer", help="spaCy's DocBins, config, log and models")
    ap.add_argument("--params", default="params.yaml", help="twinhead's params (default params.yaml)")
    ap.add_argument("--max-epochs", type=int, default=None, help="cap on twinhead's epochs (default: train.epochs)")
    ap.add_argument("--spacy-max-steps", type=int, default=None, help="spaCy's training.max_steps (default: its own)")
    ap.add_argument("--stop-at-target", action="store_true",
                    help="stop twinhead once its test sentence accuracy reaches spaCy's (saves time; its best is then "
                    "that epoch's, not early stopping's)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="change one of twinhead's params for this run (e.g. train.threads=1); repeatable")
    ap.add_argument("--spacy-results", help="take spaCy's side from an earlier run: its --json file or its --out "
                    "folder (no spaCy training; with --from-json: put it beside that file's twinhead)")
    ap.add_argument("--no-spacy", action="store_true", help="train only twinhead (combine later: --from-json "
                    "--spacy-results)")
    ap.add_argument("--json", help="write the results here (e.g. benchmarks/results/spacy_peer.json)")
    ap.add_argument("--from-json", help="only print the tables of a file --json wrote")
    ap.add_argument("--profile", nargs="*", metavar="VARIANT", choices=list(VARIANTS),
                    help="instead of the comparison: time twinhead's train_step under these variants (default: all "
                    f"of {', '.join(VARIANTS)})")
    ap.add_argument("--profile-batches", type=int, default=40, help="batches timed per variant (default 40)")
    ap.add_argument("--profile-ops", action="store_true", help="also print torch.profiler's top operators")
    ap.add_argument("--profile-threads", type=int, default=None,
                    help="torch threads for the variants that do not set them (default: torch's)")
    args = ap.parse_args(argv)
    if args.profile is not None:
        params = apply_sets(load_config({"base": BaseConfig, "preprocess": PreprocessConfig, "vocab": VocabConfig,
                                         "model": ModelConfig, "train": TrainConfig}, args.params), args.set)
        rows = profile_twinhead(load_frames(Path(args.data), params), params, args.profile_batches,
                                args.profile or list(VARIANTS), args.profile_ops, args.profile_threads)
        if args.json:
            fileio.write_json(args.json, {"command": " ".join(shlex.quote(a) for a in sys.argv),
                                          "load": os.getloadavg(), "profile": rows})
        return 0
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        if args.spacy_results:
            params = load_config({"base": BaseConfig, "preprocess": PreprocessConfig}, args.params)
            res["spacy"] = spacy_side(Path(args.spacy_results), load_frames(Path(res["data"]), params)["test"])
            res["spacy_model"] = res["spacy"]["model"]
            res["comparison"] = compare(res["spacy"], res["twinhead"], same_run=False)
    else:
        params = apply_sets(load_config({"base": BaseConfig, "preprocess": PreprocessConfig, "vocab": VocabConfig,
                                         "model": ModelConfig, "train": TrainConfig}, args.params), args.set)
        spacy_results = Path(args.spacy_results) if args.spacy_results else None
        res = run(Path(args.data), Path(args.out), params, args.max_epochs, args.spacy_max_steps,
                  args.stop_at_target, spacy_results, args.no_spacy, args.set)
    print(format_tables(res))
    if args.json and (args.spacy_results or not args.from_json):
        fileio.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    run_main(main)

