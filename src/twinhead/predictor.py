"""Load an exported bundle and predict on raw text. Needs torch, safetensors and spaCy, no training code.

A bundle folder holds:
  model.safetensors  the weights (no pickle)
  vocab.json         words, chars, intents, tags
  config.json        model config, preprocessing settings (language, lowercasing, the stop-word
                     rule), and the sha256 and sizes of the two files above
Loading checks that weights, vocab and labels belong together and refuses a mismatched bundle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from twinhead.errors import DataError, TwinheadError
from twinhead.inference import OverlongStats, predict_words, sentence_labels
from twinhead.model import JointModel, ModelConfig
from twinhead.params import parse_section
from twinhead.text import TextPipeline, char_spans, map_back, text_problem
from twinhead.vocab import Vocabs

BUNDLE_FORMAT = "twinhead-bundle/1"
WEIGHTS, VOCAB, CONFIG = "model.safetensors", "vocab.json", "config.json"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Predictor:
    """Predict intents and entities on raw text with an exported bundle."""

    def __init__(self, bundle: str | Path, device: str = "cpu"):
        import torch
        from safetensors.torch import load_file

        bundle = Path(bundle)
        cfg_path = bundle / CONFIG
        if not cfg_path.exists():
            raise TwinheadError(f"{bundle}: not a twinhead bundle (no {CONFIG}); run the export stage first")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TwinheadError(f"{cfg_path}: unreadable bundle config: {e}") from e
        if cfg.get("format") != BUNDLE_FORMAT:
            raise TwinheadError(f"{cfg_path}: bundle format {cfg.get('format')!r}, expected {BUNDLE_FORMAT}")
        for name in (WEIGHTS, VOCAB):
            path = bundle / name
            if not path.exists():
                raise TwinheadError(f"{path}: missing from the bundle")
            if sha256_file(path) != cfg["sha256"][name]:
                raise TwinheadError(f"{path}: does not belong to this bundle (its sha256 differs from the one "
                                    f"recorded in {CONFIG} at export); re-export the model")
        vocab_lists = json.loads((bundle / VOCAB).read_text(encoding="utf-8"))
        self.vocabs = Vocabs.from_lists(vocab_lists)
        sizes = {k: len(v) for k, v in vocab_lists.items()}
        if sizes != cfg["sizes"]:
            raise TwinheadError(f"{bundle}: vocabulary sizes {sizes} differ from those recorded at export "
                                f"{cfg['sizes']}")
        self.config = cfg
        mcfg = parse_section(ModelConfig, cfg["model_config"], "model_config", cfg_path)
        self.model = JointModel(mcfg, sizes["words"], sizes["chars"], self.vocabs.tags.itos, self.vocabs.intents.itos)
        state = load_file(str(bundle / WEIGHTS))
        try:
            self.model.load_state_dict(state)
        except RuntimeError as e:
            raise TwinheadError(f"{bundle}: weights do not fit the recorded model config and vocab: {e}") from e
        self.model.to(torch.device(device)).eval()
        # The text pipeline preprocess used, rebuilt from its saved settings.
        self.text = TextPipeline.from_settings(cfg["preprocess"], f"{cfg_path}: preprocess")
        self.stats = OverlongStats()

    def predict_tokens(self, token_lists: list[list[str]], batch_size: int = 256,
                       progress: Callable[[int], None] | None = None) -> list[dict]:
        """Intent, probability and one tag per token, for pre-tokenized sentences."""
        keeps, words = [], []
        for toks in token_lists:
            keep, ws = self.text.model_words(toks)
            keeps.append(keep)
            words.append(ws)
        probs, tags = predict_words(self.model, self.vocabs, words, batch_size, progress, self.stats)
        out = []
        labels = sentence_labels(self.model, self.vocabs, probs)
        chosen = self.model.intent_head.decide(probs)
        for toks, keep, p, t, label, ks in zip(token_lists, keeps, probs, tags, labels, chosen):
            # multi-label: the least probable of the labels predicted
            out.append({"intent": label, "probability": float(min(p[k] for k in ks)),
                        "tokens": list(toks), "tags": map_back(len(toks), keep, t)})
        return out

    def predict(self, texts: list[str], batch_size: int = 256,
                progress: Callable[[int], None] | None = None, where: str = "input") -> list[dict]:
        """Predict raw texts; entities carry character offsets into each text.

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
        preds = self.predict_tokens([t for t, _ in tokenized], batch_size, progress)
        for text, (toks, offs), pred in zip(texts, tokenized, preds):
            ents = []
            for start, end, label in char_spans(toks, offs, pred["tags"]):
                ents.append({"text": text[start:end], "label": label, "start": start, "end": end})
            pred["text"] = text
            pred["entities"] = ents
        return [{"text": p["text"], "intent": p["intent"], "probability": p["probability"],
                 "entities": p["entities"], "tokens": p["tokens"], "tags": p["tags"]} for p in preds]
