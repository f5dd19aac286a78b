"""The Predictor's fast path: array-at-a-time encoding, an ONNX Runtime (or torch) encoder, numpy decoding.

What the model computes is unchanged; only how. Per batch of word sequences:
  WordTable   each distinct word once: its word id and char ids, cached, so a batch is two numpy gathers
              (no torch.tensor per word)
  encoder     the network (embeddings, char CNN, BiLSTM, both heads) in one call: OnnxEncoder runs the
              bundle's model.onnx (written by export with export.onnx: true) in ONNX Runtime, one session
              call per batch; TorchEncoder runs the JointModel itself (torch.inference_mode)
  decoder     Viterbi (numpy, MaxPlus steps that skip the moves BIO forbids) and the decoded tags' probabilities (CRF
              forward-backward by matrix products in float64), instead of (B, K, K) logsumexps per step

`predict_words` returns what twinhead.inference.predict_logits returns (same overlong policy, same merge of
windows), so the Predictor builds its output from either. tests/test_fast_predict.py checks that both give
the same intents and tags, and probabilities within 1e-5.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import numpy as np
import torch

from twinhead.crf import NEG
from twinhead.inference import OverlongStats, WordPredictions, split_pieces
from twinhead.model import JointModel
from twinhead.vocab import Vocabs

ONNX_OPSET = 17
ONNX_INPUTS = ("words", "chars", "lengths", "mask")
ONNX_OUTPUTS = ("intent_logits", "tag_scores")


# --- encoding --------------------------------------------------------------------------------------


class WordTable:
    """Word id and char ids of every distinct word seen, so that a batch is encoded by array gathers.

    Row r of `chars` holds the ids of word r's first max_word_len characters (0-padded), as
    twinhead.inference.encode gives them. The cache is bounded: past `max_size` words it starts afresh, so a
    long stream of new words keeps memory flat.
    """

    def __init__(self, vocabs: Vocabs, max_word_len: int, max_size: int = 100_000):
        self.vocabs = vocabs
        self.max_word_len = max_word_len
        self.max_size = max_size
        self._reset()

    def _reset(self) -> None:
        self.index: dict[str, int] = {}
        self.word_ids = np.zeros(1024, dtype=np.int64)
        self.chars = np.zeros((1024, self.max_word_len), dtype=np.int64)
        self.lens = np.zeros(1024, dtype=np.int64)

    def _add(self, words: list[str]) -> None:
        n = len(self.index)
        if n + len(words) > len(self.word_ids):
            size = max(2 * len(self.word_ids), n + len(words))
            for name in ("word_ids", "chars", "lens"):
                old = getattr(self, name)
                new = np.zeros((size, *old.shape[1:]), dtype=old.dtype)
                new[:n] = old[:n]
                setattr(self, name, new)
        wv, cv = self.vocabs.words, self.vocabs.chars
        for k, w in enumerate(words, start=n):
            self.index[w] = k
            self.word_ids[k] = wv.index(w)
            cs = cv.encode(w[: self.max_word_len]) or [1]
            self.chars[k, : len(cs)] = cs
            self.lens[k] = len(cs)

    def rows(self, sentences: list[list[str]]) -> list[np.ndarray]:
        """The table row of every word, one int array per sentence."""
        index = self.index
        new = list(dict.fromkeys(w for ws in sentences for w in ws if w not in index))
        if new:
            if len(index) + len(new) > self.max_size:
                self._reset()
                index = self.index
                new = list(dict.fromkeys(w for ws in sentences for w in ws))
            self._add(new)
        return [np.fromiter((index[w] for w in ws), dtype=np.int64, count=len(ws)) for ws in sentences]

    def batch(self, rows: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Right-padded words (B, T), chars (B, T, C), lengths (B,) int32 and mask (B, T) bool, like
        twinhead.inference.collate (C: the longest word of the batch, which is all the char CNN needs)."""
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int32, count=len(rows))
        t = int(lengths.max())
        mask = np.arange(t)[None, :] < lengths[:, None]
        table = np.zeros((len(rows), t), dtype=np.int64)  # 0 for padding; row 0 is a real word, masked below
        table[mask] = np.concatenate(rows)
        words = np.where(mask, self.word_ids[table], 0)
        c = max(int(self.lens[table[mask]].max()), 1)
        chars = self.chars[table, :c]
        chars[~mask] = 0
        return words, chars, lengths, mask


# --- encoders --------------------------------------------------------------------------------------


class TorchEncoder:
    """The JointModel's forward pass on numpy batches; returns numpy intent logits (B, L) and tag scores (B, T, K)."""

    def __init__(self, model: JointModel):
        self.model = model
        self.device = next(model.parameters()).device

    def __call__(self, words, chars, lengths, mask) -> tuple[np.ndarray, np.ndarray]:
        dev = self.device
        with torch.inference_mode():
            il, ts = self.model(torch.from_numpy(words).to(dev), torch.from_numpy(chars).to(dev),
                                torch.from_numpy(mask).to(dev))
        return il.float().cpu().numpy(), ts.float().cpu().numpy()


class OnnxEncoder:
    """model.onnx (see build_onnx) in an ONNX Runtime CPU session; same call and results as TorchEncoder."""

    def __init__(self, model_bytes: bytes, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.char_input = "chars" in {i.name for i in self.session.get_inputs()}

    def __call__(self, words, chars, lengths, mask) -> tuple[np.ndarray, np.ndarray]:
        feed = {"words": words, "lengths": lengths, "mask": mask}
        if self.char_input:
            feed["chars"] = chars
        il, ts = self.session.run(self.names, feed)
        return il, ts


def _lstm_onnx_weights(lstm: torch.nn.LSTM, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's weights in ONNX's LSTM layout: W (2, 4H, I), R (2, 4H, H), B (2, 8H), gates i, o, f, c
    (torch's order is i, f, g, o)."""

    def gates(w: torch.Tensor) -> torch.Tensor:
        i, f, g, o = w.detach().float().chunk(4, 0)
        return torch.cat([i, o, f, g], 0)

    ws, rs, bs = [], [], []
    for suffix in ("", "_reverse"):
        w_ih, w_hh, b_ih, b_hh = (getattr(lstm, f"{name}_l{layer}{suffix}")
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        ws.append(gates(w_ih))
        rs.append(gates(w_hh))
        bs.append(torch.cat([gates(b_ih), gates(b_hh)]))
    return (torch.stack(ws).numpy(), torch.stack(rs).numpy(), torch.stack(bs).numpy())


def onnx_gap(cfg) -> str | None:
    """The model options build_onnx does not write into the graph (they are set off the default), or None."""
    gaps = [f"model.{k}={getattr(cfg, k)}" for k, off in
            (("char_encoder", "cnn"), ("attention_heads", 0)) if getattr(cfg, k) != off]
    return ", ".join(gaps) or None


def build_onnx(model: JointModel) -> bytes:
    """The JointModel's forward pass (eval mode) as an ONNX graph, serialized.

    Inputs: words (B, T) int64, chars (B, T, C) int64 (absent without a char CNN), lengths (B,) int32,
    mask (B, T) bool; outputs: intent_logits (B, L), tag_scores (B, T, K) float32. The BiLSTM is ONNX's LSTM
    with sequence_lens, which reads each sentence backwards from its own last word, as torch's packed
    sequence does. Built node by node (no tracing), so every operation is the one written here.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg = model.cfg
    if model.lstm.proj_size or not model.lstm.bidirectional or not model.lstm.batch_first:
        raise ValueError("build_onnx expects the JointModel's batch-first bidirectional LSTM")
    if onnx_gap(cfg):
        raise ValueError(f"the ONNX graph does not cover {onnx_gap(cfg)}")
    nodes, inits, names = [], [], set()
    count = [0]

    def const(name: str, value) -> str:
        if name not in names:  # a name is one value: constants like axes are asked for more than once
            names.add(name)
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        count[0] += 1
        outs = [f"{op.lower()}_{count[0]}_{k}" for k in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def linear(x: str, lin: torch.nn.Linear, name: str) -> str:
        w = const(f"{name}.weight_t", lin.weight.detach().float().numpy().T.copy())
        b = const(f"{name}.bias", lin.bias.detach().float().numpy())
        return node("Add", [node("MatMul", [x, w]), b])

    f32 = lambda t: t.detach().float().numpy()  # noqa: E731
    inputs = [helper.make_tensor_value_info("words", TensorProto.INT64, ["B", "T"])]
    x = node("Gather", [const("word_emb", f32(model.word_emb.weight)), "words"])  # (B, T, E)
    if model.char_cnn is not None:
        inputs.append(helper.make_tensor_value_info("chars", TensorProto.INT64, ["B", "T", "C"]))
        cnn = model.char_cnn
        flat = node("Flatten", ["chars"], axis=2)  # (N, C), N = B*T
        # The convolution as one matrix product over windows of k characters (ONNX Runtime's Conv on many
        # short rows is several times slower): the windows' char ids (N, C, k), zero-padded like padding=k//2,
        # gather their embeddings (N, C, k*D), times the kernel (k*D, F).
        k = cnn.conv.kernel_size[0]
        p = k // 2
        padded = node("Pad", [flat, const("char_pads", np.array([0, p, 0, p], dtype=np.int64))])  # (N, C+2p)
        big = np.iinfo(np.int64).max
        axis1 = const("win_axis", np.array([1], dtype=np.int64))
        cols = [node("Unsqueeze", [node("Slice", [padded, const(f"win_start{j}", np.array([j], dtype=np.int64)),
                                                  const(f"win_end{j}", np.array([j - 2 * p if j < 2 * p else big],
                                                                                dtype=np.int64)), axis1]),
                                   const("axis_2", np.array([2], dtype=np.int64))]) for j in range(k)]
        win = node("Concat", cols, axis=2) if k > 1 else cols[0]  # (N, C, k) char ids
        win = node("Gather", [const("char_emb", f32(cnn.emb.weight)), win])  # (N, C, k, D)
        win = node("Reshape", [win, const("shape_win", np.array([0, 0, -1], dtype=np.int64))])  # (N, C, k*D)
        w = cnn.conv.weight.detach().float().permute(2, 1, 0).reshape(-1, cnn.conv.out_channels)  # (k*D, F)
        conv = node("Add", [node("MatMul", [win, const("char_conv.weight", w.numpy().copy())]),
                            const("char_conv.bias", f32(cnn.conv.bias))])
        conv = node("Relu", [conv])  # (N, C, F)
        real = node("Cast", [node("Unsqueeze", [node("Not", [node("Equal", [flat, const(
            "zero_i64", np.array(0, dtype=np.int64))])]), const("axis_last", np.array([2], dtype=np.int64))])],
            to=TensorProto.FLOAT)  # (N, C, 1): 1 on real characters
        feats = node("ReduceMax", [node("Mul", [conv, real])], axes=[1], keepdims=0)  # (N, F); padding reads 0
        bt = node("Slice", [node("Shape", ["chars"]), const("s0", np.array([0], dtype=np.int64)),
                            const("s2", np.array([2], dtype=np.int64))])  # [B, T]
        shape = node("Concat", [bt, const("minus1", np.array([-1], dtype=np.int64))], axis=0)
        x = node("Concat", [x, node("Reshape", [feats, shape])], axis=-1)  # (B, T, E + F)
    inputs += [helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"]),
               helper.make_tensor_value_info("mask", TensorProto.BOOL, ["B", "T"])]
    h = node("Transpose", [x], perm=[1, 0, 2])  # (T, B, I): ONNX's LSTM is time-major
    hidden = model.lstm.hidden_size
    for layer in range(model.lstm.num_layers):
        w, r, b = _lstm_onnx_weights(model.lstm, layer)
        y = node("LSTM", [h, const(f"lstm.W{layer}", w), const(f"lstm.R{layer}", r), const(f"lstm.B{layer}", b),
                          "lengths"], direction="bidirectional", hidden_size=hidden)  # (T, 2, B, H)
        y = node("Transpose", [y], perm=[0, 2, 1, 3])  # (T, B, 2, H)
        h = node("Reshape", [y, const(f"shape_tb{layer}", np.array([0, 0, -1], dtype=np.int64))])  # (T, B, 2H)
    h = node("Transpose", [h], perm=[1, 0, 2])  # (B, T, 2H); zero past each sentence's end
    m = node("Unsqueeze", ["mask", const("axis_2", np.array([2], dtype=np.int64))])  # (B, T, 1)
    mf = node("Cast", [m], to=TensorProto.FLOAT)
    axis1 = const("axes_1", np.array([1], dtype=np.int64))
    count_ = node("Max", [node("ReduceSum", [mf, axis1], keepdims=0), const("one_f32", np.array(1.0, np.float32))])
    mlp = model.intent_head.mlp
    s = h  # what the intent head reads: the states, and with slot_to_intent the tag distribution (JointModel.forward)
    own = None  # slot_to_intent: the tag head's scores from the states alone (JointModel.slot_scores)
    if cfg.slot_to_intent:
        proj = model.tag_head.proj
        w = const("slot.weight_t", f32(proj.weight)[:, : 2 * hidden].T.copy())
        own = node("Add", [node("MatMul", [h, w]), const("slot.bias", f32(proj.bias))])  # (B, T, K)
        s = node("Concat", [h, node("Softmax", [own], axis=-1)], axis=-1)  # (B, T, 2H + K)
    if cfg.intent_level == "token":  # an intent distribution per token; the sentence's is their mean (its log)
        z = node("Relu", [linear(s, mlp[0], "intent.0")])
        p = node("Mul", [node("Softmax", [linear(z, mlp[3], "intent.3")], axis=-1), mf])  # (B, T, L), 0 at padding
        mean_p = node("Div", [node("ReduceSum", [p, axis1], keepdims=0), count_])  # (B, L)
        logits = node("Log", [node("Max", [mean_p, const("tiny", np.array(1e-12, np.float32))])])
    else:
        total = node("ReduceSum", [node("Mul", [s, mf]), axis1], keepdims=0)  # (B, 2H [+ K])
        mean = node("Div", [total, count_])
        mx = node("ReduceMax", [node("Where", [m, s, const("neg", np.array(NEG, dtype=np.float32))])], axes=[1],
                  keepdims=0)  # (B, 2H [+ K])
        z = node("Relu", [linear(node("Concat", [mean, mx], axis=-1), mlp[0], "intent.0")])
        logits = linear(z, mlp[3], "intent.3")  # (B, L)
    nodes.append(helper.make_node("Identity", [logits], ["intent_logits"]))
    if cfg.intent_to_tags and cfg.intent_level == "token":
        h = node("Concat", [h, p], axis=-1)  # each token's own intent distribution
    elif cfg.intent_to_tags:
        p = node("Sigmoid", [logits]) if model.intent_head.multi_label else node("Softmax", [logits], axis=-1)
        p = node("Unsqueeze", [p, axis1])  # (B, 1, L)
        tb = node("Slice", [node("Shape", [h]), const("s0b", np.array([0], dtype=np.int64)),
                            const("s2b", np.array([2], dtype=np.int64))])
        n_out = np.array([model.intent_head.n_labels], dtype=np.int64)
        p = node("Expand", [p, node("Concat", [tb, const("n_out", n_out)], axis=0)])  # (B, T, L)
        h = node("Concat", [h, p], axis=-1)
    # without intent_to_tags the tag head reads the states alone, which slot_to_intent has scored already
    scores = own if own is not None and not cfg.intent_to_tags else linear(h, model.tag_head.proj, "tags")
    nodes.append(helper.make_node("Identity", [scores], ["tag_scores"]))
    outputs = [helper.make_tensor_value_info("intent_logits", TensorProto.FLOAT, ["B", "L"]),
               helper.make_tensor_value_info("tag_scores", TensorProto.FLOAT, ["B", "T", "K"])]
    graph = helper.make_graph(nodes, "twinhead", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="twinhead")
    proto.ir_version = 8  # readable by every onnxruntime since 1.10
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


# --- decoding --------------------------------------------------------------------------------------


class Decoder:
    """The tag head's decoding: tag ids (B, T) and the probability of each decoded tag (B, T).

    Tag ids: on the CPU, Viterbi in numpy with MaxPlus steps (the BIO structure of the transitions spares most of
    the (B, K, K) maximum; exact, and 16.4 -> 2.6 ms of CPU against the head's torch decode on a batch of 256
    development-set sentences, one thread); on a GPU, the head's own decode. CRF head: Viterbi over transitions +
    BIO mask (as CRF.decode) and the marginals of the decoded tags by forward-backward (as CRF.marginals, but in
    float64 and with matrix products instead of (B, K, K) logsumexps). Softmax head: Viterbi over log-softmax scores
    and the BIO mask (as heads.viterbi), or argmax without constraints; the softmax probability of each decoded tag.
    """

    def __init__(self, model: JointModel):
        head = model.tag_head
        self.head = head
        self.device = next(head.parameters()).device
        self.crf = hasattr(head, "crf")
        with torch.no_grad():
            if self.crf:
                # Viterbi adds in float32, as CRF.decode does, so that equal scores break ties the same way;
                # the marginals are computed in float64
                params = head.crf._params(torch.float32)
                self.trans32, self.start32, self.end32 = (p.cpu().numpy() for p in params)
                self.trans, self.start, self.end = (p.astype(np.float64) for p in
                                                    (self.trans32, self.start32, self.end32))
                self.exp_trans = np.exp(self.trans)  # forbidden (NEG) moves become exactly 0
                self.exp_trans_t = np.ascontiguousarray(self.exp_trans.T)
            else:
                self.constrained = head.bio_constraints
                self.trans32 = head.trans.float().cpu().numpy()
                self.start32 = head.start.float().cpu().numpy()
        self.step = MaxPlus(self.trans32)

    def __call__(self, scores: np.ndarray, lengths: np.ndarray, mask: np.ndarray,
                 probs: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        em = np.where(mask[:, :, None], scores.astype(np.float32, copy=False), np.float32(0.0))
        if self.device.type != "cpu":  # the model is on a GPU: the head's own decode, there
            with torch.inference_mode():
                dev = self.device
                ids = self.head.decode(torch.from_numpy(em).to(dev), torch.from_numpy(mask).to(dev)).cpu().numpy()
            if not self.crf:
                ids = np.where(mask, ids, 0)
        elif self.crf:
            ids = viterbi(em, mask, self.trans32, self.start32, self.end32, self.step)
        elif self.constrained:
            ids = np.where(mask, viterbi(log_softmax(em), mask, self.trans32, self.start32, None, self.step), 0)
        else:
            ids = np.where(mask, scores.argmax(-1), 0)
        if self.crf:
            return ids, (self._crf_probs(em.astype(np.float64), mask, lengths, ids) if probs else None)
        if not probs:
            return ids, None
        p = softmax(scores.astype(np.float32, copy=False))
        return ids, np.take_along_axis(p, ids[:, :, None], 2)[:, :, 0].astype(np.float64)

    def _crf_probs(self, em: np.ndarray, mask: np.ndarray, lengths: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """P(y_t = ids[:, t] | sentence) by scaled forward-backward: forward and backward vectors in probability
        space, each step a matrix product with exp(transitions) times exp(emissions - their maximum), then
        normalised; the posterior at t is their product, normalised. Four array operations a step. Should a
        sum underflow to 0 (emissions hundreds apart, not seen in practice), the log-space version decides."""
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 on underflow: detected below
            if len(em) == 1 and mask.all():  # one sentence (online prediction): vectors, not batches
                one = self._crf_probs_one(em[0], ids[0])
                if one is not None:
                    return one[None]
            return self._crf_probs_scaled(em, mask, lengths, ids)

    def _crf_probs_one(self, em: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
        """_crf_probs_scaled for one unpadded sentence (T, K), on vectors: half its array calls. None on
        underflow."""
        t_len = len(em)
        et, et_t = self.exp_trans, self.exp_trans_t
        x = np.exp(em - _max(em, 1, keepdims=True))
        fw = np.empty_like(em)
        a = em[0] + self.start
        a = np.exp(a - a.max())
        fw[0] = a = a / a.sum()
        for t in range(1, t_len):
            u = (a @ et) * x[t]
            fw[t] = a = u / u.sum()
        bw = np.empty_like(em)
        q = np.exp(self.end - self.end.max())
        bw[-1] = q = q / q.sum()
        for t in range(t_len - 2, -1, -1):
            v = (q * x[t + 1]) @ et_t
            bw[t] = q = v / v.sum()
        post = fw * bw
        norm = post.sum(1)
        if not np.all(norm > 0) or not np.all(np.isfinite(norm)):
            return None
        return post[np.arange(t_len), ids] / norm

    def _crf_probs_scaled(self, em, mask, lengths, ids) -> np.ndarray:
        b, t_len, k = em.shape
        et, et_t = self.exp_trans, self.exp_trans_t
        full = bool(mask.all())
        x = np.exp(em - _max(em, 2, keepdims=True))  # (B, T, K), each row's best tag 1
        fw = np.empty_like(em)
        a = np.exp(em[:, 0] + self.start - _max(em[:, 0] + self.start, 1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        fw[:, 0] = a
        for t in range(1, t_len):
            u = _mm(a, et) * x[:, t]
            u /= u.sum(1, keepdims=True)
            a = u if full else np.where(mask[:, t, None], u, a)
            fw[:, t] = a
        bw = np.empty_like(em)
        q_end = np.exp(self.end - self.end.max())
        q_end = np.broadcast_to(q_end / q_end.sum(), (b, k))
        q = q_end
        bw[:, -1] = q
        for t in range(t_len - 2, -1, -1):
            v = _mm(q * x[:, t + 1], et_t)
            v /= v.sum(1, keepdims=True)
            q = v if full else np.where(mask[:, t + 1, None], v, q_end)
            bw[:, t] = q
        post = fw * bw
        norm = post.sum(2)
        if not np.all(norm > 0) or not np.all(np.isfinite(norm)):
            return self._crf_probs_log(em, mask, lengths, ids)
        chosen = np.take_along_axis(post, ids[:, :, None], 2)[:, :, 0] / norm
        return chosen if full else np.where(mask, chosen, 0.0)

    def _crf_probs_log(self, em: np.ndarray, mask: np.ndarray, lengths: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """_crf_probs in log space with a logsumexp over every (previous, next) tag pair, as CRF.marginals
        does: (B, K, K) work a step, exact whatever the emissions' range."""
        b, t_len, k = em.shape
        trans = self.trans

        def lse(x: np.ndarray, axis: int) -> np.ndarray:
            m = _max(x, axis, keepdims=True)
            return (np.log(np.exp(x - m).sum(axis, keepdims=True)) + m).squeeze(axis)

        alphas = np.empty_like(em)
        a = em[:, 0] + self.start
        alphas[:, 0] = a
        for t in range(1, t_len):
            nxt = lse(a[:, :, None] + trans, 1) + em[:, t]
            a = np.where(mask[:, t, None], nxt, a)
            alphas[:, t] = a
        log_z = lse(a + self.end, 1)  # padding carried alpha over: the last column is the last real one
        betas = np.empty_like(em)
        end = np.broadcast_to(self.end, (b, k))
        beta = end
        betas[:, -1] = beta
        for t in range(t_len - 2, -1, -1):
            nxt = lse(trans + (em[:, t + 1] + beta)[:, None, :], 2)
            beta = np.where(mask[:, t + 1, None], nxt, end)
            betas[:, t] = beta
        rows = np.arange(b)[:, None]
        cols = np.arange(t_len)[None, :]
        chosen = alphas[rows, cols, ids] + betas[rows, cols, ids] - log_z[:, None]
        return np.where(mask, np.exp(np.where(mask, chosen, 0.0)), 0.0)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b. More than a few rows go through torch: numpy's OpenBLAS runs those on threads of its own that
    ignore torch.set_num_threads and spin against each other on a busy machine (100x slower, measured here)."""
    if a.shape[0] <= 16:
        return a @ b
    return torch.from_numpy(a).matmul(torch.from_numpy(b)).numpy()


_max = np.maximum.reduce  # ndarray.max without its Python-level wrapper: a few microseconds a call, per step


def _logsumexp(x: np.ndarray) -> np.ndarray:
    s = x.max(1)
    return np.log(np.exp(x - s[:, None]).sum(1)) + s


def log_softmax(x: np.ndarray) -> np.ndarray:
    s = x.max(-1, keepdims=True)
    return x - s - np.log(np.exp(x - s).sum(-1, keepdims=True))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class MaxPlus:
    """One Viterbi step: for a score (B, K) over the previous tags, each next tag j's best previous tag
    argmax_i score[:, i] + trans[i, j] and that sum, (B, K) each. Exactly what the dense (B, K, K) maximum gives
    (the same float32 sums, the first index on ties), with the work the transition matrix allows.

    Columns are sorted once by the moves that are allowed into them (scores above NEG / 2):
      open    every previous tag allowed (under BIO: O and every B-x): the winner is the row's best previous tag
              i1 whenever i1's sum beats the second-best score plus the column's largest transition (then no
              other tag can reach it, ties included); a gather, not a maximum over K
      narrow  at most `narrow` previous tags allowed (I-x: from B-x and I-x): the maximum over those only, when
              it beats the best score plus the column's largest forbidden move
      dense   the rest: the full maximum
    A row where a test fails (near-ties among the best tags, not seen with a trained model) is redone densely.
    """

    def __init__(self, trans: np.ndarray, narrow: int = 4):
        self.trans = np.ascontiguousarray(trans, dtype=np.float32)
        self.trans_t = np.ascontiguousarray(self.trans.T)  # [to, from]: the max runs along contiguous memory
        k = len(trans)
        allowed = self.trans > NEG / 2
        n_in = allowed.sum(0)
        self.open = np.flatnonzero(n_in == k)
        self.narrow = np.flatnonzero((n_in > 0) & (n_in <= narrow) & (n_in < k))
        self.dense = np.setdiff1d(np.arange(k), np.concatenate([self.open, self.narrow]))
        self.open_max = self.trans[:, self.open].max(0)
        src = np.zeros((len(self.narrow), int(n_in[self.narrow].max(initial=1))), dtype=np.int64)
        forbidden_max = np.full(len(self.narrow), -np.inf, dtype=np.float32)
        for n, j in enumerate(self.narrow):
            ins = np.flatnonzero(allowed[:, j])  # ascending: the first of equal sums is the smallest index
            src[n] = np.concatenate([ins, np.full(src.shape[1] - len(ins), ins[0])])
            forbidden_max[n] = self.trans[~allowed[:, j], j].max()
        self.src, self.src_trans, self.forbidden_max = src, self.trans[src, self.narrow[:, None]], forbidden_max
        # worth it only when most columns avoid the dense maximum
        self.structured = len(self.open) + len(self.narrow) >= k / 2

    def dense_step(self, score: np.ndarray, cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        b = len(score)
        trans_t = self.trans_t if cols is None else self.trans_t[cols]
        cand = score[:, None, :] + trans_t  # (B, J, K): to j from i
        idx = cand.argmax(2)  # the first best i, as torch's max
        flat = np.arange(b * len(trans_t)) * cand.shape[2]
        return cand.ravel()[flat + idx.ravel()].reshape(b, len(trans_t)), idx  # cheaper than a second reduction

    def __call__(self, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b, k = score.shape
        if not self.structured or b < 8:
            return self.dense_step(score)
        rows = np.arange(b)
        i1 = score.argmax(1)
        s1 = score[rows, i1]
        rest = score.copy()
        rest[rows, i1] = -np.inf
        s2 = _max(rest, 1)
        best = np.empty((b, k), dtype=score.dtype)
        idx = np.empty((b, k), dtype=np.int64)
        sums = s1[:, None] + self.trans[i1[:, None], self.open]  # the sums the dense max computes for i1
        best[:, self.open] = sums
        idx[:, self.open] = i1[:, None]
        # float rounding is monotonic: no other tag's rounded sum exceeds round(s2 + largest transition)
        ok = (sums > s2[:, None] + self.open_max).all(1)
        if len(self.narrow):
            cand = score[:, self.src] + self.src_trans  # (B, N, r)
            arg = cand.argmax(2)
            top = np.take_along_axis(cand, arg[:, :, None], 2)[:, :, 0]
            best[:, self.narrow] = top
            idx[:, self.narrow] = np.take_along_axis(np.broadcast_to(self.src, (b, *self.src.shape)),
                                                     arg[:, :, None], 2)[:, :, 0]
            ok &= (top > s1[:, None] + self.forbidden_max).all(1)
        if len(self.dense):
            best[:, self.dense], idx[:, self.dense] = self.dense_step(score, self.dense)
        if not ok.all():
            redo = np.flatnonzero(~ok)
            best[redo], idx[redo] = self.dense_step(score[redo])
        return best, idx


def viterbi(em: np.ndarray, mask: np.ndarray, trans: np.ndarray, start: np.ndarray,
            end: np.ndarray | None, step: MaxPlus | None = None) -> np.ndarray:
    """Best tag path (B, T) under additive transition scores, padded positions 0: CRF.decode (with `end`) and
    heads.viterbi (without), step for step, so that equal scores pick the same (first) tag. `step`: a MaxPlus
    of `trans`, built once per model."""
    b, t_len, k = em.shape
    step = step if step is not None else MaxPlus(trans)
    full = bool(mask.all())
    if b == 1 and full:
        return _viterbi_one(em[0], step.trans_t, start, end)[None]
    score = em[:, 0] + start
    history = np.empty((t_len, b, k), dtype=np.int64)
    ident = np.arange(k)
    for t in range(1, t_len):
        best, idx = step(score)
        if full:
            score = best + em[:, t]
            history[t] = idx
        else:
            m = mask[:, t, None]
            score = np.where(m, best + em[:, t], score)
            history[t] = np.where(m, idx, ident)
    last = (score + end if end is not None else score).argmax(1)
    path = np.empty((b, t_len), dtype=np.int64)
    path[:, -1] = last
    rows = np.arange(b)
    for t in range(t_len - 1, 0, -1):
        last = history[t, rows, last]
        path[:, t - 1] = last
    return path if full else np.where(mask, path, 0)


def _viterbi_one(em: np.ndarray, trans_t: np.ndarray, start: np.ndarray, end: np.ndarray | None) -> np.ndarray:
    """viterbi for one unpadded sentence (T, K): the same float32 sums and ties, on vectors."""
    t_len, k = em.shape
    cols = np.arange(k)
    history = np.empty((t_len, k), dtype=np.int64)
    score = em[0] + start
    for t in range(1, t_len):
        cand = score + trans_t  # (K, K): to j from i
        history[t] = idx = cand.argmax(1)
        score = cand[cols, idx] + em[t]
    last = int((score + end if end is not None else score).argmax())
    path = np.empty(t_len, dtype=np.int64)
    path[-1] = last
    for t in range(t_len - 1, 0, -1):
        path[t - 1] = last = history[t, last]
    return path


def length_batches(lengths: list[int], batch_size: int, min_uniform: int = 32) -> list[list[int]]:
    """Indices into `lengths` in batches of at most batch_size: sentences of one length together wherever
    there are at least min_uniform (or batch_size) of them (no padding: the LSTM runs unpacked, see
    JointModel.forward), the rest sorted by length into padded batches."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches, rest = [], []
    for _, group in itertools.groupby(order, key=lengths.__getitem__):
        ks = list(group)
        while len(ks) >= min(min_uniform, batch_size):
            batches.append(ks[:batch_size])
            ks = ks[batch_size:]
        rest.extend(ks)
    batches.extend(rest[b: b + batch_size] for b in range(0, len(rest), batch_size))
    return batches


# --- the whole batch loop --------------------------------------------------------------------------


def predict_words(encoder, decoder: Decoder, table: WordTable, model: JointModel, sentences: list[list[str]],
                  batch_size: int = 256, progress: Callable[[int], None] | None = None,
                  stats: OverlongStats | None = None, tag_probs: bool = True,
                  workers: int = 1) -> tuple[np.ndarray, list, list]:
    """Sentence logits (N, L), tag ids (one int array per sentence) and, with tag_probs, each decoded tag's
    probability (one float array per sentence; NaN past a truncated input's max_len) for non-empty word lists.

    The same pieces, overlong policy and window merge as twinhead.inference.predict_logits; batches by
    length_batches.
    """
    cfg = model.cfg
    stats = stats if stats is not None else OverlongStats()
    pieces, truncated = split_pieces(sentences, cfg, stats)
    rows = table.rows(sentences)
    batches = length_batches([e - s for _, s, e in pieces], batch_size)
    n = len(sentences)
    logit_sum = np.zeros((n, model.intent_head.n_labels), dtype=np.float64)
    weight = np.zeros(n)
    o_id = model.tags.index("O") if "O" in model.tags else 0
    ids_out = [np.full(len(ws), o_id, dtype=np.int64) for ws in sentences]
    probs_out = [np.full(len(ws), np.nan) for ws in sentences] if tag_probs else None
    simple = len(pieces) == n  # one piece per sentence, each whole: results need no merging

    def run(ks: list[int]):
        batch = [pieces[k] for k in ks]
        words, chars, lengths, mask = table.batch([rows[i][s:e] for i, s, e in batch])
        il, ts = encoder(words, chars, lengths, mask)
        return batch, lengths, il, *decoder(ts, lengths, mask, tag_probs)

    if workers > 1 and len(batches) > 1:
        # ONNX Runtime, numpy and torch release the GIL in their kernels: batches run side by side, each on
        # one thread, and are merged in order below.
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(workers)
        results = pool.map(run, batches)
    else:
        pool, results = None, map(run, batches)
    for batch, lengths, il, ids, probs in results:
        idx = np.fromiter((i for i, _, _ in batch), dtype=np.int64, count=len(batch))
        span = lengths.astype(np.float64)
        if simple:
            logit_sum[idx] = il
            weight[idx] = 1.0
        else:
            np.add.at(logit_sum, idx, il.astype(np.float64) * span[:, None])
            np.add.at(weight, idx, span)
        for row, (i, s, e) in enumerate(batch):
            ids_out[i][s:e] = ids[row, : e - s]
            if probs_out is not None:
                probs_out[i][s:e] = probs[row, : e - s]
        if progress:
            progress(len(batch))
    if pool is not None:
        pool.shutdown()
    if truncated:
        warnings.warn(f"{truncated} input(s) longer than model.max_len={cfg.max_len} tokens were "
                      "truncated; the rest of each is tagged O (policy model.overlong=truncate)", stacklevel=3)
    return logit_sum / weight[:, None], ids_out, probs_out


__all__ = ["Decoder", "MaxPlus", "OnnxEncoder", "TorchEncoder", "WordTable", "WordPredictions", "build_onnx",
           "predict_words", "viterbi"]
