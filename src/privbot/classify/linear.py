"""The trained model at run time: plain dicts and numpy arrays, no scikit-learn.

Why this exists: scikit-learn is the right tool to *fit* the model, but a poor one to
apply it to one message at a time.  Each ``transform``/``decision_function`` call spends
most of its time validating inputs (about 1 ms per message, twice per message and once
more per clause), and importing it costs about half a second of every start.  A
TF-IDF + linear SVM is just "count n-grams, weight them, dot them with six columns", so
after training the fitted vectorisers and SVM are flattened into :class:`LinearModel`,
which computes exactly the same scores (checked by ``tests/test_classify_speed.py``)
with a dictionary look-up per n-gram.

Character n-grams are taken inside words only (scikit-learn's ``char_wb``), so a
word's n-grams do not depend on its neighbours: they are worked out once per distinct
word and remembered (:attr:`LinearModel._word_cache`).  A message and its clauses share
their words, and a mailbox repeats its vocabulary, so most words cost one look-up.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = ["LinearModel", "from_sklearn"]

#: scikit-learn's token pattern used for the word vectoriser (kept identical).
WORD_TOKEN = r"(?u)\b\w[\w']*\b"
#: Distinct words whose char n-grams are remembered; the cache is emptied when full.
WORD_CACHE_SIZE = 50_000  # ~15 MB at most; a mailbox's working vocabulary fits
#: Texts scored per numpy pass in a batch (measured: 128-512 is fastest).
CHUNK_ROWS = 256


class LinearModel:
    """TF-IDF (sublinear tf, l2 per block) over char_wb and word n-grams, then ``X·W + b``."""

    def __init__(
        self,
        char_vocab: dict[str, int],
        char_idf: np.ndarray,
        char_range: tuple[int, int],
        word_vocab: dict[str, int],
        word_idf: np.ndarray,
        word_range: tuple[int, int],
        word_pattern: str,
        weights: np.ndarray,
        bias: np.ndarray,
    ) -> None:
        self.char_vocab = char_vocab
        self.char_range = char_range
        self.word_vocab = word_vocab
        self.word_range = word_range
        self.word_pattern = word_pattern
        n_char = len(char_idf)
        # One index space: word columns follow the char columns.
        self.idf = np.concatenate([char_idf, word_idf]).astype(np.float64)
        self.weights = np.ascontiguousarray(weights, dtype=np.float64)  # (n_features, n_classes)
        self.bias = np.asarray(bias, dtype=np.float64)
        self.n_char = n_char
        self._init_runtime()

    # Pickle only the model; run-time helpers are rebuilt on load.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for k in ("_word_cache", "_tokens"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._word_cache: dict[str, tuple[int, ...]] = {}
        self._tokens = re.compile(self.word_pattern).findall

    # ------------------------------------------------------------------ features
    def _char_cols(self, word: str) -> tuple[int, ...]:
        """Vocabulary columns of the char n-grams of one word (``char_wb``; repeats kept)."""
        cols = self._word_cache.get(word)
        if cols is not None:
            return cols
        vocab = self.char_vocab
        w = " " + word + " "
        w_len = len(w)
        out: list[int] = []
        lo, hi = self.char_range
        for n in range(lo, hi + 1):
            # Same walk as sklearn's _char_wb_ngrams: a word shorter than n counts once.
            offset = 0
            g = vocab.get(w[0:n])
            if g is not None:
                out.append(g)
            while offset + n < w_len:
                offset += 1
                g = vocab.get(w[offset : offset + n])
                if g is not None:
                    out.append(g)
            if offset == 0:
                break
        cols = tuple(out)
        if len(self._word_cache) >= WORD_CACHE_SIZE:
            self._word_cache.clear()
        self._word_cache[word] = cols
        return cols

    def _word_cols(self, text: str) -> list[int]:
        tokens = self._tokens(text)
        vocab = self.word_vocab
        lo, hi = self.word_range
        out: list[int] = []
        n_tok = len(tokens)
        for n in range(lo, min(hi, n_tok) + 1):
            grams = tokens if n == 1 else [" ".join(tokens[i : i + n]) for i in range(n_tok - n + 1)]
            for g in grams:
                c = vocab.get(g)
                if c is not None:
                    out.append(c)
        return out

    # ------------------------------------------------------------------ scoring
    def decision(self, char_texts: list[str], word_texts: list[str]) -> np.ndarray:
        """Raw scores ``(len(texts), n_classes)``; texts already normalised by the caller.

        ``char_texts[i]`` feeds the char block and ``word_texts[i]`` (the same text with
        negation marks) the word block of row ``i``.
        """
        n = len(char_texts)
        if n > CHUNK_ROWS:
            # Arrays for a few hundred texts stay in cache; a whole backlog at once does not.
            return np.vstack([
                self.decision(char_texts[i : i + CHUNK_ROWS], word_texts[i : i + CHUNK_ROWS])
                for i in range(0, n, CHUNK_ROWS)
            ])
        n_char = self.n_char
        n_feat = len(self.idf)
        cols: list[int] = []  # every n-gram occurrence's column, repeats included
        bounds: list[int] = []  # where each block (row i chars, row i words) ends in ``cols``
        char_cols = self._char_cols
        cache = self._word_cache
        for i in range(n):
            for word in char_texts[i].lower().split():
                c = cache.get(word)
                cols.extend(c if c is not None else char_cols(word))
            bounds.append(len(cols))
            cols.extend(c + n_char for c in self._word_cols(word_texts[i].lower()))
            bounds.append(len(cols))
        out = np.empty((n, len(self.bias)))
        out[:] = self.bias
        if not cols:
            return out
        col_a = np.fromiter(cols, dtype=np.int64, count=len(cols))
        starts = np.asarray(bounds, dtype=np.int64)
        lengths = starts.copy()
        lengths[1:] -= starts[:-1]
        block = np.repeat(np.arange(2 * n, dtype=np.int64), lengths)
        # Count each (block, column) pair in C: one key per occurrence, sorted, run lengths.
        keys = block * n_feat + col_a
        keys.sort()
        first = np.empty(len(keys), dtype=bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        idx = np.flatnonzero(first)
        counts = np.diff(idx, append=len(keys))
        keys = keys[idx]
        seg_a = keys // n_feat
        col_a = keys - seg_a * n_feat
        vals = (np.log(counts) + 1.0) * self.idf[col_a]  # sublinear tf x idf
        norms = np.sqrt(np.bincount(seg_a, weights=vals * vals, minlength=2 * n))
        norms[norms == 0.0] = 1.0
        vals /= norms[seg_a]  # l2 per block, as each vectoriser normalises its own part
        contrib = self.weights[col_a] * vals[:, None]
        row = seg_a >> 1
        for k in range(out.shape[1]):
            out[:, k] += np.bincount(row, weights=contrib[:, k], minlength=n)
        return out


def from_sklearn(char_vec: Any, word_vec: Any, clf: Any, n_classes: int, present: list[int]) -> LinearModel:
    """Flatten fitted ``TfidfVectorizer``s (char_wb, word) and a ``LinearSVC`` into a model.

    ``present`` lists the class columns the SVM was fitted on; missing columns get a
    score of -5 (an intents folder without some intent, in tests).
    """
    for vec, analyzer in ((char_vec, "char_wb"), (word_vec, "word")):
        if vec.analyzer != analyzer or not vec.lowercase or vec.strip_accents or vec.norm != "l2" \
                or not vec.use_idf or not vec.sublinear_tf or vec.stop_words or vec.preprocessor or vec.tokenizer:
            raise ValueError(f"unsupported vectoriser settings for {analyzer}")
    coef = np.asarray(clf.coef_, dtype=np.float64)
    inter = np.asarray(clf.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:  # two classes: sklearn keeps one row for the second class
        coef = np.vstack([-coef, coef])
        inter = np.array([-inter[0], inter[0]])
    n_feat = coef.shape[1]
    weights = np.zeros((n_feat, n_classes))
    bias = np.full(n_classes, -5.0)
    weights[:, present] = coef.T
    bias[present] = inter
    return LinearModel(
        char_vocab={k: int(v) for k, v in char_vec.vocabulary_.items()},
        char_idf=np.asarray(char_vec.idf_),
        char_range=tuple(char_vec.ngram_range),
        word_vocab={k: int(v) for k, v in word_vec.vocabulary_.items()},
        word_idf=np.asarray(word_vec.idf_),
        word_range=tuple(word_vec.ngram_range),
        word_pattern=word_vec.token_pattern,
        weights=weights,
        bias=bias,
    )
