"""Load an exported bundle and predict on raw text. Needs torch, safetensors and spaCy, no training code.

The bundle's layout and its integrity manifest are described in twinhead.bundle. Loading verifies every
file against the manifest, then checks that weights, vocab and labels belong together, and refuses a
mismatched bundle.

Backends (the same predictions; see twinhead.fast and README "Prediction speed"):
  onnx       the bundle's model.onnx (export.onnx: true) in ONNX Runtime (`pip install twinhead[fast]`),
             numpy decoding; the fastest on CPU. A bundle exported with export.quantize: int8 holds an int8
             model.onnx: this backend runs it (a few tags differ), the others the float32 weights
  torch      the JointModel in torch, numpy decoding
  reference  twinhead.inference.predict_logits, the code evaluate and training use; slowest
  auto       onnx when the bundle has model.onnx, onnxruntime is installed and the device is the CPU, else
             torch (with a warning when only onnxruntime is missing)
"""

from __future__ import annotations

import functools
import gc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from twinhead.bundle import (
    CONFIG,
    ONNX,
    TASKS,
    VOCAB,
    WEIGHTS,
    read_onnx_entry,
    read_temperature,
    read_vocab_lists,
    verify_bundle,
)
from twinhead.errors import DataError, TwinheadError
from twinhead.inference import (
    OverlongStats,
    intent_probs,
    map_back_probs,
    predict_logits,
    sentence_labels,
    span_confidences,
    top_labels,
)
from twinhead.model import JointModel, ModelConfig
from twinhead.params import parse_section
from twinhead.text import TextPipeline, map_back, text_problem
from twinhead.vocab import Vocabs

DEFAULT_TOP_K = 3  # intents listed in each prediction's top_intents
BACKENDS = ("auto", "onnx", "torch", "reference")
FAST_EXTRA = "pip install 'twinhead[fast]'"


def gc_paused(fn):
    """Run `fn` with Python's cyclic garbage collector paused. Predicting builds many small lists and dicts,
    which trigger collections that scan every object torch and spaCy hold (15% of the batch time, measured);
    the outputs hold no reference cycles, and any cycle made meanwhile is collected after the call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class Predictor:
    """Predict intents and entities on raw text with an exported bundle."""

    def __init__(self, bundle: str | Path, device: str = "cpu", backend: str = "auto", threads: int | None = None):
        """Load `bundle`. backend: auto, onnx, torch or reference (see the module docstring); threads (default:
        torch.get_num_threads(), so torch.set_num_threads sets both backends): with onnx, that many batches run
        side by side, each on one ONNX Runtime thread (faster than one batch on many: README, Prediction speed)."""
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        bundle = Path(bundle)
        cfg = verify_bundle(bundle)  # before parsing any other file of the bundle
        vocab_lists = read_vocab_lists(bundle)
        try:
            self.vocabs = Vocabs.from_lists(vocab_lists)
        except ValueError as e:
            raise TwinheadError(f"{bundle / VOCAB}: {e}") from e
        sizes = {k: len(v) for k, v in vocab_lists.items()}
        if sizes != cfg["sizes"]:
            raise TwinheadError(f"{bundle}: vocabulary sizes {sizes} differ from those recorded at export "
                                f"{cfg['sizes']}")
        self.config = cfg
        cfg_path = bundle / CONFIG
        mcfg = parse_section(ModelConfig, cfg["model_config"], "model_config", cfg_path)
        self.model = JointModel(mcfg, sizes["words"], sizes["chars"], self.vocabs.tags.itos, self.vocabs.intents.itos)
        try:
            state = load_file(str(bundle / WEIGHTS))
        except SafetensorError as e:
            raise TwinheadError(f"{bundle / WEIGHTS}: not readable safetensors weights: {e}") from e
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            raise TwinheadError(f"{bundle}: weights do not fit the recorded model config and vocab: {e}") from e
        self.model.to(torch.device(device)).eval()
        # The text pipeline preprocess used, rebuilt from its saved settings.
        self.text = TextPipeline.from_settings(cfg["preprocess"], f"{cfg_path}: preprocess")
        self.stats = OverlongStats()
        self.tasks = list(cfg.get("tasks", TASKS))  # a single-task model predicts no intent (or no entities)
        self.temperature = read_temperature(cfg, cfg_path)  # divides the intent logits (1.0: not calibrated)
        self.workers = 1
        self.backend = self._choose_backend(bundle, backend, device, threads)
        if self.backend != "reference":
            from twinhead.fast import Decoder, TorchEncoder, WordTable

            self.table = WordTable(self.vocabs, mcfg.max_word_len)
            self.decoder = Decoder(self.model)
            if self.backend == "torch":
                self.encoder = TorchEncoder(self.model)
        self._tag_names = np.array(self.model.tags, dtype=object)

    def _choose_backend(self, bundle: Path, backend: str, device: str, threads: int | None) -> str:
        if backend not in BACKENDS:
            raise TwinheadError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        if backend in ("torch", "reference"):
            return backend
        entry = read_onnx_entry(self.config, bundle / CONFIG)
        why = None
        if entry is None:
            why = f"{bundle} has no {ONNX} (export it with export.onnx: true)"
        elif not device.startswith("cpu"):
            why = f"ONNX Runtime runs on the CPU here, not on {device}"
        elif not onnxruntime_available():
            why = f"onnxruntime is not installed ({FAST_EXTRA})"
        if why is None:
            import torch

            from twinhead.fast import OnnxEncoder

            try:
                self.encoder = OnnxEncoder((bundle / ONNX).read_bytes(), 1)
            except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
                raise TwinheadError(f"{bundle / ONNX}: ONNX Runtime cannot load it: {str(e)[:300]}") from e
            self.workers = max(1, threads or torch.get_num_threads())
            return "onnx"
        if backend == "onnx":
            raise TwinheadError(f"backend 'onnx': {why}")
        if entry is not None:  # the bundle was exported for ONNX Runtime, but it cannot be used here
            warnings.warn(f"{why}; predicting with torch, which is slower", stacklevel=3)
        return "torch"

    @gc_paused
    def predict_tokens(self, token_lists: list[list[str]], batch_size: int = 256,
                       progress: Callable[[int], None] | None = None, top_k: int = DEFAULT_TOP_K) -> list[dict]:
        """Intent, probability, the top_k intents and one tag per token (with the probability of that tag:
        None for a removed stop word), for pre-tokenized sentences."""
        if top_k < 1:
            raise TwinheadError(f"top_k must be a positive integer, not {top_k}")
        removable = self.text.removable
        if removable:
            keeps, words = [], []
            for toks in token_lists:
                keep, ws = self.text.model_words(toks)
                keeps.append(keep)
                words.append(ws)
        else:  # nothing to remove: every token is read (the common case, without a list per sentence)
            keeps = None
            lower = self.text.lowercase
            words = [[t.lower() for t in toks] if lower else list(toks) for toks in token_lists]
        logits, tags, tag_probs = self._word_predictions(words, batch_size, progress)
        probs = intent_probs(self.model, logits, self.temperature)  # calibrated (see twinhead.calibration)
        has_intent, has_tags = "intent" in self.tasks, "tags" in self.tasks
        if not has_intent:
            labels = tops = [None] * len(words)
            chosen_p = [None] * len(words)
        else:
            labels = sentence_labels(self.model, self.vocabs, probs)
            tops = top_labels(self.model, self.vocabs, probs, top_k)
            if self.model.intent_head.multi_label:  # the least probable of the labels predicted
                chosen_p = [float(min(p[k] for k in ks)) for p, ks in zip(probs, self.model.intent_head.decide(probs))]
            else:
                chosen_p = probs[np.arange(len(probs)), probs.argmax(1)].tolist()
        out = []
        for r, toks in enumerate(token_lists):
            n = len(toks)
            if not has_tags:
                t, tp = ["O"] * n, [None] * n
            elif keeps is None:
                t, tp = tags[r], tag_probs[r]
                if not self._canonical(t):
                    t = map_back(n, list(range(n)), t)
            else:
                t, tp = map_back(n, keeps[r], tags[r]), map_back_probs(n, keeps[r], tag_probs[r])
            out.append({"intent": labels[r], "probability": chosen_p[r], "top_intents": tops[r],
                        "tokens": list(toks), "tags": t, "tag_probabilities": tp})
        return out

    @staticmethod
    def _canonical(tags: list[str]) -> bool:
        """True when map_back would return `tags` unchanged: every I-x continues an x entity."""
        prev = "O"
        for tag in tags:
            if tag[0] == "I" and (prev == "O" or prev[2:] != tag[2:]):
                return False
            prev = tag
        return True

    def _word_predictions(self, words: list[list[str]], batch_size: int, progress) -> tuple:
        """Sentence logits (N, L), tag strings and decoded-tag probabilities (None past a truncated input's
        max_len) for each sentence's model words, by this predictor's backend."""
        if self.backend == "reference":
            res = predict_logits(self.model, self.vocabs, words, batch_size, progress, self.stats, tag_probs=True)
            return res.logits, res.tags, res.tag_probs
        from twinhead.fast import predict_words

        logits, ids, probs = predict_words(self.encoder, self.decoder, self.table, self.model, words, batch_size,
                                           progress, self.stats, workers=self.workers)
        names = self._tag_names
        tags = [names[r].tolist() for r in ids]
        tag_probs = [[None if p != p else p for p in r.tolist()] if np.isnan(r).any() else r.tolist() for r in probs]
        return logits, tags, tag_probs

    @gc_paused
    def predict(self, texts: list[str], batch_size: int = 256,
                progress: Callable[[int], None] | None = None, where: str = "input",
                top_k: int = DEFAULT_TOP_K) -> list[dict]:
        """Predict raw texts; entities carry character offsets into each text and a confidence.

        Each prediction: text, intent, probability (of that intent, temperature-scaled), top_intents (the
        top_k intents with their probabilities, most probable first), entities (text, label, start, end,
        confidence: the product of the probabilities of the entity's decoded tags), tokens, tags.
        An empty or whitespace-only text is a DataError naming its position (`where`, 1-based).
        """
        tokenized = []
        for n, text in enumerate(texts, start=1):
            if not isinstance(text, str):
                raise DataError(f"text must be a string, got {type(text).__name__}", where, n)
            problem = text_problem(text)
            if problem:
                raise DataError(problem, where, n)
            toks, offs = self.text.tokenize(text)
            if not toks:
                raise DataError("text is empty or whitespace only", where, n)
            tokenized.append((toks, offs))
        preds = self.predict_tokens([t for t, _ in tokenized], batch_size, progress, top_k)
        out = []
        for text, (toks, offs), p in zip(texts, tokenized, preds):
            ents = []
            for s, e, label, conf in span_confidences(p["tags"], p["tag_probabilities"]):
                start, end = offs[s], offs[e - 1] + len(toks[e - 1])
                ents.append({"text": text[start:end], "label": label, "start": start, "end": end,
                             "confidence": conf})
            out.append({"text": text, "intent": p["intent"], "probability": p["probability"],
                        "top_intents": p["top_intents"], "entities": ents, "tokens": p["tokens"], "tags": p["tags"]})
        return out
