"""Prompt features: a small local text encoder plus hand-made markers.

The encoder is latent semantic analysis fitted on the training prompts: word and word-bigram TF-IDF
(numbers folded into digit-count classes, LaTeX commands and code symbols kept as tokens) projected
on a truncated SVD. It was chosen over the CPU model's own embeddings (llama.cpp, tens of ms per
prompt) and over sentence-transformer packages (torch, ~10 ms per prompt) because a decision must
take under 2 ms including features; see bench/README.md for the measurements. At decision time the
projection is a gather-and-sum over the prompt's token rows, so one prompt costs tens of
microseconds.

Hand-made markers: length, digits, numbers, LaTeX, code, lines, question marks, option letters,
non-ASCII share (language), words and word length. Empty prompts (only a task tag) give zeros and
``has_text = 0``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np
from scipy import sparse

_TOKEN_RE = re.compile(
    r"\\[a-zA-Z]+|[a-zA-Z]+|\d+|[\u3040-\u30ff\u4e00-\u9fff]|[$=+\-*/^_{}()\[\]<>#%&|:;?!]"
)
_DIGIT_CLASS = ("", "0", "00", "000", "0000")
_NUMBER_RE = re.compile(r"\d+")
_OPTION_RE = re.compile(r"(?m)^\s*\(?[A-J][\)\.:]\s")
_HEAD_CHARS = 3000
_TAIL_CHARS = 1000

HANDCRAFTED_NAMES = (
    "log_chars",
    "has_text",
    "digit_share",
    "log_numbers",
    "log_latex",
    "log_code",
    "log_lines",
    "log_questions",
    "log_options",
    "non_ascii_share",
    "log_words",
    "word_len",
)


def _clip_text(text: str) -> str:
    # Bounded work per prompt keeps the p99 latency flat; the question usually sits at the end.
    if len(text) <= _HEAD_CHARS + _TAIL_CHARS:
        return text
    return text[:_HEAD_CHARS] + " " + text[-_TAIL_CHARS:]


# A prompt sketch stands in for a prompt whose text was deleted (data retention): the bag of its
# tokens and its hand-made markers, which is everything the features below read, so a sketch
# gives exactly the prompt's features. It starts with NUL, which no stored prompt contains.
SKETCH_PREFIX = "\x00sketch:"


def prompt_sketch(text: str) -> str:
    """Return the sketch of ``text``: same features, no text in reading order."""
    import json

    if text.startswith(SKETCH_PREFIX):
        return text
    counts = Counter(tokenize(text))
    return SKETCH_PREFIX + json.dumps(
        {"t": dict(sorted(counts.items())), "h": handcrafted(text).tolist()},
        separators=(",", ":"),
    )


def _sketch(text: str) -> dict[str, Any]:
    import json

    return dict(json.loads(text[len(SKETCH_PREFIX) :]))


def tokenize(text: str) -> list[str]:
    """Return unigram and bigram tokens of ``text`` (numbers folded to '0' x digit count, max 4)."""
    if text.startswith(SKETCH_PREFIX):
        return [tok for tok, n in _sketch(text)["t"].items() for _ in range(int(n))]
    toks = [
        _DIGIT_CLASS[min(len(t), 4)] if t[0].isdigit() else t[:24]
        for t in _TOKEN_RE.findall(_clip_text(text).lower())
    ]
    return toks + [a + " " + b for a, b in zip(toks, toks[1:], strict=False)]


def handcrafted(text: str) -> np.ndarray:
    """Return the hand-made marker vector of ``text`` in HANDCRAFTED_NAMES order."""
    if text.startswith(SKETCH_PREFIX):
        return np.asarray(_sketch(text)["h"], dtype=np.float64)
    n = len(text)
    if n == 0 or not text.strip():
        return np.zeros(len(HANDCRAFTED_NAMES), dtype=np.float64)
    t = text if n <= 20000 else text[:20000]
    m = len(t)
    digits = sum(t.count(d) for d in "0123456789")  # ten C-level scans beat a char loop
    words = t.split()
    nw = len(words)
    non_ascii = m - len(t.encode("ascii", "ignore"))
    latex = t.count("\\") + t.count("$") + t.count("^")
    code = (
        t.count("def ")
        + t.count("return")
        + t.count("{")
        + t.count(";")
        + t.count("==")
        + t.count("```")
        + t.count("import ")
    )
    numbers = len(_NUMBER_RE.findall(t))
    return np.array(
        [
            math.log1p(n),
            1.0,
            digits / m,
            math.log1p(numbers),
            math.log1p(latex),
            math.log1p(code),
            math.log1p(t.count("\n")),
            math.log1p(t.count("?")),
            math.log1p(len(_OPTION_RE.findall(t))),
            non_ascii / m,
            math.log1p(nw),
            min(20.0, (m - t.count(" ")) / max(nw, 1)),
        ],
        dtype=np.float64,
    )


class TextEncoder:
    """TF-IDF + truncated SVD fitted on training prompts; encodes one prompt in microseconds."""

    def __init__(
        self, dim: int = 64, max_vocab: int = 30000, min_df: int = 2, seed: int = 0
    ) -> None:
        self.dim = dim
        self.max_vocab = max_vocab
        self.min_df = min_df
        self.seed = seed
        self.vocab: dict[str, int] = {}
        self.idf = np.zeros(0, dtype=np.float64)
        self.rows = np.zeros((0, dim), dtype=np.float32)  # idf-weighted SVD rows per token

    @property
    def out_dim(self) -> int:
        """Return the embedding width (may be below ``dim`` on tiny corpora)."""
        return int(self.rows.shape[1])

    def fit(self, texts: list[str]) -> TextEncoder:
        """Learn the vocabulary, IDF and SVD projection from ``texts``; return self."""
        docs = [Counter(tokenize(t)) for t in texts if t]
        df: Counter[str] = Counter()
        for d in docs:
            df.update(d.keys())
        kept = [t for t, c in df.most_common() if c >= self.min_df][: self.max_vocab]
        if len(kept) < 4:  # tiny or textless corpus: fall back to every token seen
            kept = [t for t, _ in df.most_common()][: self.max_vocab]
        self.vocab = {t: i for i, t in enumerate(kept)}
        n_docs = max(len(docs), 1)
        self.idf = np.array(
            [math.log((1 + n_docs) / (1 + df[t])) + 1.0 for t in kept], dtype=np.float64
        )
        k = min(self.dim, max(len(kept) - 1, 0), max(len(docs) - 1, 0))
        if k < 1:
            self.rows = np.zeros((len(kept), 0), dtype=np.float64)
            return self
        x = self._tfidf_matrix([t for t in texts if t])
        from sklearn.decomposition import TruncatedSVD

        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=5, random_state=self.seed)
        svd.fit(x)
        # Fold the IDF into the projection rows so encoding is sum(tf_weight * rows[token]) / norm.
        # float32 halves the saved model (a RouterVersion blob); sums are done in float64.
        self.rows = np.ascontiguousarray((svd.components_.T * self.idf[:, None]).astype(np.float32))
        return self

    def _weights(self, text: str) -> tuple[np.ndarray, np.ndarray, float]:
        counts = Counter(tokenize(text))
        get = self.vocab.get
        n = len(counts)
        ia = np.fromiter((get(t, -1) for t in counts), dtype=np.int64, count=n)
        ca = np.fromiter(counts.values(), dtype=np.float64, count=n)
        keep = ia >= 0
        if not keep.any():
            return np.zeros(0, dtype=np.int64), np.zeros(0), 0.0
        ia = ia[keep]
        wa = 1.0 + np.log(ca[keep])  # sublinear term frequency
        norm = float(np.sqrt(np.sum((wa * self.idf[ia]) ** 2)))
        return ia, wa, norm

    def _tfidf_matrix(self, texts: list[str]) -> sparse.csr_matrix:
        indptr = [0]
        indices: list[np.ndarray] = []
        data: list[np.ndarray] = []
        for t in texts:
            ia, wa, norm = self._weights(t)
            if norm > 0:
                indices.append(ia)
                data.append(wa * self.idf[ia] / norm)
            indptr.append(indptr[-1] + len(ia) if norm > 0 else indptr[-1])
        ind = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
        dat = np.concatenate(data) if data else np.zeros(0)
        return sparse.csr_matrix(
            (dat, ind, np.asarray(indptr)), shape=(len(texts), len(self.vocab))
        )

    def encode_one(self, text: str) -> np.ndarray:
        """Return the (unnormalised) LSA embedding of one prompt; zeros for empty/unknown text."""
        if not text or self.rows.shape[1] == 0:
            return np.zeros(self.out_dim)
        ia, wa, norm = self._weights(text)
        if norm == 0.0:
            return np.zeros(self.out_dim)
        return (wa @ self.rows[ia]) / norm

    def encode(self, texts: list[str]) -> np.ndarray:
        """Return embeddings for many prompts (same numbers as ``encode_one``)."""
        if self.rows.shape[1] == 0:
            return np.zeros((len(texts), self.out_dim))
        # _tfidf_matrix already divides by idf-weighted norm; rows carry idf, so divide it back out.
        out = np.zeros((len(texts), self.out_dim))
        for i, t in enumerate(texts):
            if t:
                out[i] = self.encode_one(t)
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Return (json-able metadata, arrays) for saving."""
        tokens = [""] * len(self.vocab)
        for t, i in self.vocab.items():
            tokens[i] = t
        meta = {
            "dim": self.dim,
            "max_vocab": self.max_vocab,
            "min_df": self.min_df,
            "seed": self.seed,
            "tokens": tokens,
        }
        return meta, {"enc_idf": self.idf, "enc_rows": self.rows}

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> TextEncoder:
        """Rebuild an encoder saved with ``state``."""
        enc = cls(int(meta["dim"]), int(meta["max_vocab"]), int(meta["min_df"]), int(meta["seed"]))
        tokens = [str(t) for t in meta["tokens"]]
        enc.vocab = {t: i for i, t in enumerate(tokens)}
        enc.idf = np.asarray(arrays["enc_idf"], dtype=np.float64)
        enc.rows = np.ascontiguousarray(arrays["enc_rows"], dtype=np.float32)
        return enc


class PromptFeaturizer:
    """Raw feature vector of a prompt: ``[LSA embedding (dim), hand-made markers]``.

    Centring and scaling are the learner's business (it centres per task tag).
    """

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        self.encoder = TextEncoder(dim=dim, seed=seed)

    @property
    def emb_dim(self) -> int:
        """Return the width of the embedding part."""
        return self.encoder.out_dim

    @property
    def width(self) -> int:
        """Return the full feature width."""
        return self.encoder.out_dim + len(HANDCRAFTED_NAMES)

    def fit(self, texts: list[str]) -> PromptFeaturizer:
        """Fit the text encoder on training prompts; return self."""
        self.encoder.fit(texts)
        return self

    def transform_one(self, text: str) -> np.ndarray:
        """Return the raw feature vector of one prompt."""
        return np.concatenate([self.encoder.encode_one(text), handcrafted(text)])

    def transform(self, texts: list[str]) -> np.ndarray:
        """Return raw features for many prompts, shape (n, width)."""
        out = np.zeros((len(texts), self.width))
        for i, t in enumerate(texts):
            out[i] = self.transform_one(t)
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Return (json-able metadata, arrays) for saving."""
        return self.encoder.state()

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> PromptFeaturizer:
        """Rebuild a featurizer saved with ``state``."""
        f = cls()
        f.encoder = TextEncoder.from_state(meta, arrays)
        return f
