"""twinhead: one BiLSTM encoder, two heads (text classification + BIO sequence labeling)."""

__version__ = "0.1.0"
