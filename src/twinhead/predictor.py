"""Load an exported bundle and predict on raw text. Needs torch, safetensors and spaCy, no training code.

The bundle's layout and its integrity manifest are described in twinhead.bundle. Loading verifies every
file against the manifest, then checks that weights, vocab and labels belong together, and refuses a
mismatched bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twinhead.bundle import CONFIG, TASKS, VOCAB, WEIGHTS, read_temperature, read_vocab_lists, verify_bundle
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


class Predictor:
    """Predict intents and entities on raw text with an exported bundle."""

    def __init__(self, bundle: str | Path, device: str = "cpu"):
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

    def predict_tokens(self, token_lists: list[list[str]], batch_size: int = 256,
                       progress: Callable[[int], None] | None = None, top_k: int = DEFAULT_TOP_K) -> list[dict]:
        """Intent, probability, the top_k intents and one tag per token (with the probability of that tag:
        None for a removed stop word), for pre-tokenized sentences."""
        if top_k < 1:
            raise TwinheadError(f"top_k must be a positive integer, not {top_k}")
        keeps, words = [], []
        for toks in token_lists:
            keep, ws = self.text.model_words(toks)
            keeps.append(keep)
            words.append(ws)
        res = predict_logits(self.model, self.vocabs, words, batch_size, progress, self.stats, tag_probs=True)
        probs = intent_probs(self.model, res.logits, self.temperature)  # calibrated (see twinhead.calibration)
        labels = sentence_labels(self.model, self.vocabs, probs)
        chosen = self.model.intent_head.decide(probs)
        tops = top_labels(self.model, self.vocabs, probs, top_k)
        has_intent, has_tags = "intent" in self.tasks, "tags" in self.tasks
        out = []
        for toks, keep, p, t, tp, label, ks, top in zip(token_lists, keeps, probs, res.tags, res.tag_probs, labels,
                                                        chosen, tops):
            n = len(toks)
            out.append({"intent": label if has_intent else None,
                        # multi-label: the least probable of the labels predicted
                        "probability": float(min(p[k] for k in ks)) if has_intent else None,
                        "top_intents": top if has_intent else None,
                        "tokens": list(toks),
                        "tags": map_back(n, keep, t) if has_tags else ["O"] * n,
                        "tag_probabilities": map_back_probs(n, keep, tp) if has_tags else [None] * n})
        return out

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
