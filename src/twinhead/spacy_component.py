"""twinhead as a spaCy pipeline component.

    nlp = spacy.blank("en")
    nlp.add_pipe("twinhead", config={"bundle": "models/export"})
    doc = nlp("play the beatles on spotify")
    doc.cats                   # {"PlayMusic": 0.97, ...}: every intent with its probability
    doc.ents                   # the predicted slots as entity spans (label: the slot type)
    doc.ents[0]._.confidence   # the entity's confidence where the Predictor gives one, else None

The factory is found through the `spacy_factories` entry point of the installed package, so `add_pipe`
works without importing this module. spaCy imports that entry point whenever it creates any pipeline, so
this module imports only spaCy at the top; the predictor loads when a component is made. The
bundle's own tokenizer (twinhead.text, saved with the model) reads the doc's text; its character spans
are then fitted onto the doc's tokens, widened to token boundaries where the two tokenizers cut
differently (`Doc.char_span(..., alignment_mode="expand")`). doc.ents is replaced; a whitespace-only doc
gets no cats and no entities.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import filter_spans, minibatch

if not Span.has_extension("confidence"):
    Span.set_extension("confidence", default=None)


def annotate(doc: Doc, pred: dict | None, cats: dict[str, float]) -> Doc:
    """Set doc.cats and doc.ents from one Predictor.predict result on doc.text (None: nothing predicted)."""
    doc.cats = dict(cats)
    if pred is None:
        doc.ents = []
        return doc
    spans = []
    for ent in pred["entities"]:
        span = doc.char_span(ent["start"], ent["end"], label=ent["label"], alignment_mode="expand")
        if span is not None:  # never for offsets into doc.text; kept so a bad offset cannot crash a pipeline
            span._.confidence = ent.get("confidence")
            spans.append(span)
    # Widening to the doc's tokens can make two neighbours overlap; doc.ents allows no overlap, so the
    # longer one is kept (spaCy's own rule for conflicting spans).
    doc.ents = filter_spans(spans)
    return doc


class TwinheadComponent:
    """Intent probabilities (doc.cats) and slots (doc.ents) from an exported twinhead bundle."""

    def __init__(self, nlp: Language, name: str, bundle: str, device: str = "cpu", batch_size: int = 256):
        self.name = name
        self.batch_size = batch_size
        # Imported here, not at the top: spaCy imports every spacy_factories entry point whenever any
        # pipeline is created (spacy.blank included), and that must stay cheap for spaCy users.
        from twinhead.predictor import Predictor

        self.predictor = Predictor(bundle, device)
        # The sentence head's outputs: intents, or the label atoms of a multi-label model (sigmoid each).
        self.labels = list(self.predictor.model.sentence_labels)

    def __call__(self, doc: Doc) -> Doc:
        (doc,) = self._annotate([doc])
        return doc

    def pipe(self, docs: Iterable[Doc], batch_size: int | None = None) -> Iterator[Doc]:
        for batch in minibatch(docs, size=batch_size or self.batch_size):
            yield from self._annotate(list(batch))

    def _annotate(self, docs: list[Doc]) -> list[Doc]:
        live = [d for d in docs if d.text.strip()]  # the Predictor refuses empty texts; a pipeline meets them
        # top_k = every label: the Predictor's (temperature-calibrated) probability of each intent
        preds = iter(self.predictor.predict([d.text for d in live], self.batch_size, top_k=len(self.labels),
                                            where=f"spaCy component {self.name!r}, doc of the batch"))
        for doc in docs:
            pred = next(preds) if doc.text.strip() else None
            annotate(doc, pred, self._cats(pred))
        return docs

    def _cats(self, pred: dict | None) -> dict[str, float]:
        if pred is None or not pred.get("top_intents"):  # a tags-only model's intent head is untrained
            return {}
        return {t["intent"]: float(t["probability"]) for t in pred["top_intents"]}


@Language.factory(
    "twinhead",
    default_config={"bundle": "models/export", "device": "cpu", "batch_size": 256},
    assigns=["doc.cats", "doc.ents", "span._.confidence"],
)
def make_twinhead(nlp: Language, name: str, bundle: str, device: str, batch_size: int) -> TwinheadComponent:
    """spaCy's factory: `nlp.add_pipe("twinhead", config={"bundle": ..., "device": ..., "batch_size": ...})`."""
    return TwinheadComponent(nlp, name, bundle, device, batch_size)
