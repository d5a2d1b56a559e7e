"""Word n-gram language model: estimation, ARPA writing/reading/validation, ARPA -> G.

Estimator
---------
``estimate_kneser_ney`` is a small interpolated **modified Kneser-Ney** estimator
(Chen & Goodman 1998, the variant KenLM's ``lmplz`` and SRILM's ``-kndiscount
-interpolate`` implement), written here because no packaged estimator was usable
offline: Debian's ``irstlm`` (6.00.05) does install, but its ``tlm`` output on small
text has quirks (``<s> <s>`` n-grams, ~40 % of the unigram mass on ``<unk>``,
singleton n-grams pruned by default) and it would be one more system dependency;
``kenlm`` on PyPI is query-only (``lmplz`` is not in it); ``kaldilm`` only converts.

- Sentences are padded ``<s> w1 .. wn </s>`` (one ``<s>``). Counts of every k-gram,
  k = 1..N (``<s>`` is never predicted).
- Adjusted counts: the raw count for N-grams and for k-grams starting with ``<s>``;
  otherwise the continuation count N1+(. g) (number of distinct left neighbours).
- Discounts per order from count-of-counts of the adjusted counts:
  Y = n1/(n1+2 n2), D1 = 1-2Y n2/n1, D2 = 2-3Y n3/n2, D3+ = 3-4Y n4/n3; when a
  count-of-counts is zero or a discount leaves (0, k) the order falls back to a single
  absolute discount D = Y (or 0.5 when that is undefined too).
- p_k(w|h) = max(a(hw) - D(a(hw)), 0) / sum_v a(hv) + gamma(h) p_{k-1}(w|h'), with
  gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / sum_v a(hv); an unseen history
  passes straight to the lower order. The lowest order interpolates with the uniform
  distribution over the vocabulary (all words, ``</s>`` and ``<unk>``; not ``<s>``), so
  ``<unk>`` — the LM's unknown word — gets gamma_0/|V| of the unigram mass.
- ARPA: every seen k-gram with log10 p_k(w|h) and, when it is a history of longer
  n-grams, log10 gamma as its back-off weight. This is exact: in ARPA back-off,
  p(w|h) for an unseen hw is bow(h) p(w|h'), which equals the interpolated formula.
  Each history's distribution sums to 1 (tested, also after an ARPA round trip).

ARPA -> G
---------
``arpa_to_fst_text`` validates the ARPA file in Python first (``validate_arpa``: header,
section counts, field syntax, probabilities <= 0, every n-gram's prefix present, words
in the symbol table) because kaldilm's arpa2fst *aborts the process* on a line it
cannot parse; it then runs kaldilm in a child process, so even an unexpected abort
becomes an ``ArpaError`` with kaldilm's message instead of killing the caller.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from rescorer.corpora.synthetic import load_plan
from rescorer.corpora.text_sources import fortune_sentences
from rescorer.text import NotAWordError, normalize_word
from rescorer.formats.contract import UNK
from rescorer.utils import atomic_path

BOS, EOS = "<s>", "</s>"
LOG10_ZERO = -99.0  # ARPA's "impossible" (used for <s> as a predicted word)


class ArpaError(ValueError):
    """A malformed ARPA file (message names the file and line) or a failed conversion."""


class LmError(ValueError):
    """Bad LM input (no sentences, bad order, ...)."""


Ngram = Tuple[str, ...]


@dataclass
class NgramLM:
    """A back-off n-gram model in ARPA form: log10 probs and back-off weights per n-gram."""

    order: int
    probs: List[Dict[Ngram, float]]  # probs[k-1][ngram] = log10 p, ngram of length k
    backoffs: List[Dict[Ngram, float]]  # backoffs[k-1][ngram] = log10 bow (absent = 0)
    meta: Dict[str, object] = field(default_factory=dict)

    @property
    def vocabulary(self) -> List[str]:
        """Unigram words in ARPA order (includes <s>, </s>, <unk> when present)."""
        return [g[0] for g in self.probs[0]]

    def log10_prob(self, word: str, history: Sequence[str] = ()) -> float:
        """log10 p(word | history) with ARPA back-off (history truncated to order-1)."""
        h = tuple(history)[-(self.order - 1) :] if self.order > 1 else ()
        bow = 0.0
        while True:
            g = h + (word,)
            p = self.probs[len(g) - 1].get(g)
            if p is not None:
                return p + bow
            if not h:
                if word != UNK and (UNK,) in self.probs[0]:
                    return self.probs[0][(UNK,)] + bow
                return LOG10_ZERO
            bow += self.backoffs[len(h) - 1].get(h, 0.0)
            h = h[1:]

    def prob(self, word: str, history: Sequence[str] = ()) -> float:
        return 10.0 ** self.log10_prob(word, history)

    def histories(self) -> List[Ngram]:
        """Every n-gram (order < N) that the model uses as a history, plus the empty one."""
        out: List[Ngram] = [()]
        for k in range(1, self.order):
            out += [g for g in self.probs[k - 1] if EOS not in g and UNK not in g]
        return out

    def num_ngrams(self) -> List[int]:
        return [len(p) for p in self.probs]

    # ------------------------------------------------------------ ARPA I/O

    def write_arpa(self, path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write("\\data\\\n")
            for k, p in enumerate(self.probs, 1):
                f.write(f"ngram {k}={len(p)}\n")
            for k, p in enumerate(self.probs, 1):
                f.write(f"\n\\{k}-grams:\n")
                bows = self.backoffs[k - 1]
                for g, lp in p.items():
                    line = f"{lp:.7f}\t{' '.join(g)}"
                    if k < self.order and g in bows:
                        line += f"\t{bows[g]:.7f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")
        return path


# ---------------------------------------------------------------- estimation


def _discounts(count_of_counts: Counter) -> Tuple[float, float, float]:
    n1, n2, n3, n4 = (count_of_counts.get(i, 0) for i in (1, 2, 3, 4))
    if n1 > 0 and n2 > 0:
        y = n1 / (n1 + 2 * n2)
        if n3 > 0 and n4 > 0:
            d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
            if 0 < d[0] < 1 and 0 < d[1] < 2 and 0 < d[2] < 3:
                return d
        if 0 < y < 1:
            return (y, y, y)
    return (0.5, 0.5, 0.5)


def estimate_kneser_ney(sentences: Iterable[Sequence[str]], order: int = 3) -> NgramLM:
    """Interpolated modified Kneser-Ney n-gram model of word sentences (see module doc)."""
    if not 1 <= order <= 6:
        raise LmError(f"n-gram order must be 1..6, got {order}")
    raw: List[Counter] = [Counter() for _ in range(order)]
    num_sent = 0
    for s in sentences:
        words = list(s)
        if not words:
            continue
        for w in words:
            if w in (BOS, EOS, UNK) or not w or any(c.isspace() for c in w):
                raise LmError(f"LM text has a reserved or malformed word {w!r} (in {' '.join(words)!r})")
        num_sent += 1
        t = [BOS] + words + [EOS]
        for i in range(1, len(t)):
            for k in range(1, order + 1):
                if i - k + 1 < 0:
                    break
                raw[k - 1][tuple(t[i - k + 1 : i + 1])] += 1
    if num_sent == 0:
        raise LmError("no sentences to estimate the LM from")

    # adjusted counts
    adj: List[Dict[Ngram, int]] = [dict() for _ in range(order)]
    adj[order - 1] = dict(raw[order - 1])
    for k in range(order - 1, 0, -1):  # k = length of the lower-order n-grams
        cont: Counter = Counter()
        for g in raw[k]:  # (k+1)-grams
            cont[g[1:]] += 1
        a = adj[k - 1]
        for g, c in raw[k - 1].items():
            a[g] = c if g[0] == BOS else cont[g]
    discounts = [_discounts(Counter(a.values())) for a in adj]

    # per-history totals and N1/N2/N3+ counts
    stats: List[Dict[Ngram, List[float]]] = []
    for k in range(order):
        st: Dict[Ngram, List[float]] = defaultdict(lambda: [0.0, 0, 0, 0])
        for g, c in adj[k].items():
            s = st[g[:-1]]
            s[0] += c
            s[min(c, 3)] += 1
        stats.append(dict(st))

    vocab = sorted({g[0] for g in raw[0]} | {EOS, UNK})
    uniform = 1.0 / len(vocab)

    def gamma(k: int, h: Ngram) -> float:
        s = stats[k].get(h)
        if s is None:
            return 1.0
        d = discounts[k]
        return (d[0] * s[1] + d[1] * s[2] + d[2] * s[3]) / s[0]

    probs: List[Dict[Ngram, float]] = [dict() for _ in range(order)]  # linear probs first

    def p_interp(k: int, g: Ngram) -> float:
        """p_{k+1}(g[-1] | g[:-1]) for len(g) == k+1 (uses lower orders already computed)."""
        h, w = g[:-1], g[-1]
        lower = probs[k - 1].get(g[1:]) if k > 0 else uniform
        if lower is None:  # lower n-gram unseen: recurse
            lower = p_interp(k - 1, g[1:])
        s = stats[k].get(h)
        if s is None:
            return lower
        c = adj[k].get(g, 0)
        d = discounts[k][min(c, 3) - 1] if c > 0 else 0.0
        return max(c - d, 0.0) / s[0] + gamma(k, h) * lower

    for w in vocab:
        probs[0][(w,)] = p_interp(0, (w,))
    for k in range(1, order):
        for g in adj[k]:
            probs[k][g] = p_interp(k, g)

    out_probs: List[Dict[Ngram, float]] = []
    out_bows: List[Dict[Ngram, float]] = []
    for k in range(order):
        lp = {}
        if k == 0:
            lp[(BOS,)] = LOG10_ZERO
        for g, p in sorted(probs[k].items()):
            lp[g] = math.log10(p)
        out_probs.append(lp)
        bows = {}
        if k < order - 1:
            for g in lp:
                if g in stats[k + 1]:
                    bows[g] = math.log10(gamma(k + 1, g))
        out_bows.append(bows)
    meta = {
        "estimator": "interpolated modified Kneser-Ney (rescorer.decoding.lm)",
        "sentences": num_sent,
        "discounts": [list(d) for d in discounts],
    }
    return NgramLM(order, out_probs, out_bows, meta)


# ---------------------------------------------------------------- ARPA reading / validation


def _parse_float(tok: str, path, n: int) -> float:
    try:
        v = float(tok)
    except ValueError:
        raise ArpaError(f"{path}:{n}: {tok!r} is not a number") from None
    if math.isnan(v) or math.isinf(v):
        raise ArpaError(f"{path}:{n}: {tok!r} is not a finite number")
    return v


def read_arpa(path, symbols: Optional[Iterable[str]] = None) -> NgramLM:
    """Parse and validate an ARPA file; raises ArpaError naming the file and line.

    Checks: the ``\\data\\`` header with ``ngram k=N`` lines for k = 1..N, one section
    per order in order, each line ``log10p w1..wk [log10bow]`` (no back-off on the
    highest order), log10p <= 0, the declared number of entries, no duplicates, the
    prefix of every k-gram present as a (k-1)-gram, ``\\end\\``; with ``symbols``, every
    word in that set.
    """
    path = Path(path)
    if not path.is_file():
        raise ArpaError(f"{path}: no such ARPA file")
    sym = set(symbols) if symbols is not None else None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ArpaError(f"{path}: not UTF-8 text ({e})") from None
    i = 0
    while i < len(lines) and lines[i].strip() != "\\data\\":
        i += 1
    if i == len(lines):
        raise ArpaError(f"{path}: no \\data\\ header: not an ARPA file")
    i += 1
    declared: List[int] = []
    while i < len(lines) and lines[i].strip():
        ln = lines[i].strip()
        if not ln.startswith("ngram ") or "=" not in ln:
            raise ArpaError(f"{path}:{i + 1}: expected 'ngram K=COUNT' in the header, got {ln!r}")
        k, _, c = ln[6:].partition("=")
        try:
            k, c = int(k), int(c)
        except ValueError:
            raise ArpaError(f"{path}:{i + 1}: bad header line {ln!r}") from None
        if k != len(declared) + 1 or c < 0:
            raise ArpaError(f"{path}:{i + 1}: header line {ln!r} out of order or negative")
        declared.append(c)
        i += 1
    if not declared:
        raise ArpaError(f"{path}: the \\data\\ header declares no n-gram orders")
    order = len(declared)
    probs: List[Dict[Ngram, float]] = [dict() for _ in range(order)]
    bows: List[Dict[Ngram, float]] = [dict() for _ in range(order)]
    k = 0
    ended = False
    while i < len(lines):
        ln = lines[i].strip()
        n = i + 1
        i += 1
        if not ln:
            continue
        if ln == "\\end\\":
            ended = True
            break
        if ln.startswith("\\") and ln.endswith("-grams:"):
            try:
                kk = int(ln[1:-7])
            except ValueError:
                raise ArpaError(f"{path}:{n}: bad section header {ln!r}") from None
            if kk != k + 1 or kk > order:
                raise ArpaError(f"{path}:{n}: section {ln!r} out of order (expected \\{k + 1}-grams:)")
            if k > 0 and len(probs[k - 1]) != declared[k - 1]:
                raise ArpaError(f"{path}: the header declares {declared[k - 1]} {k}-grams, the section has {len(probs[k - 1])}")
            k = kk
            continue
        if k == 0:
            raise ArpaError(f"{path}:{n}: n-gram line before any \\k-grams: section: {ln!r}")
        parts = ln.split()
        if len(parts) not in (k + 1, k + 2) or (len(parts) == k + 2 and k == order):
            raise ArpaError(f"{path}:{n}: a {k}-gram line needs log10-prob, {k} words" + (" and an optional back-off" if k < order else "") + f"; got {ln!r}")
        lp = _parse_float(parts[0], path, n)
        if lp > 1e-6:
            raise ArpaError(f"{path}:{n}: log10 probability {lp} > 0")
        g = tuple(parts[1 : k + 1])
        if g in probs[k - 1]:
            raise ArpaError(f"{path}:{n}: duplicate {k}-gram {' '.join(g)!r}")
        if sym is not None:
            for w in g:
                if w not in sym:
                    raise ArpaError(f"{path}:{n}: word {w!r} is not in the word symbol table")
        if k > 1 and g[:-1] not in probs[k - 2]:
            raise ArpaError(f"{path}:{n}: {k}-gram {' '.join(g)!r} has no {k - 1}-gram prefix {' '.join(g[:-1])!r}")
        probs[k - 1][g] = lp
        if len(parts) == k + 2:
            bows[k - 1][g] = _parse_float(parts[-1], path, n)
    if not ended:
        raise ArpaError(f"{path}: no \\end\\ line (truncated file?)")
    if k != order:
        raise ArpaError(f"{path}: the header declares {order} orders but only {k} sections were found")
    if len(probs[k - 1]) != declared[k - 1]:
        raise ArpaError(f"{path}: the header declares {declared[k - 1]} {k}-grams, the section has {len(probs[k - 1])}")
    return NgramLM(order, probs, bows, {"path": str(path)})


validate_arpa = read_arpa


# ---------------------------------------------------------------- ARPA -> G (kaldilm)

_CONVERT = r"""
import sys, kaldilm
arpa, words, out, order = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = kaldilm.arpa2fst(input_arpa=arpa, output_fst="", disambig_symbol="#0", read_symbol_table=words, max_order=order)
open(out, "w").write(s)
"""


def arpa_to_fst_text(arpa_path, words_txt, out_path, max_order: Optional[int] = None, timeout: float = 3600) -> Path:
    """Validate ``arpa_path`` and convert it with kaldilm (in a child process) to an
    OpenFst text G (``#0`` on back-off arcs, ``<s>``/``</s>`` as epsilons).

    Raises ArpaError with a clear message for a malformed file or a failed conversion.
    """
    words = [ln.split()[0] for ln in Path(words_txt).read_text(encoding="utf-8").splitlines() if ln.strip()]
    lm = read_arpa(arpa_path, symbols=words)
    order = max_order or lm.order
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td) / "G.fst.txt"
        r = subprocess.run(
            [sys.executable, "-c", _CONVERT, str(arpa_path), str(words_txt), str(tmp), str(order)],
            capture_output=True, text=True, timeout=timeout,
        )
        if r.returncode != 0 or not tmp.exists():
            tail = "\n".join((r.stderr or "").strip().splitlines()[-8:])
            raise ArpaError(f"kaldilm arpa2fst failed on {arpa_path} (exit {r.returncode}):\n{tail}")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), str(out_path))
    return out_path


# ---------------------------------------------------------------- LM texts per corpus


def read_sentences(path) -> List[List[str]]:
    """One sentence per line, words separated by whitespace (blank lines skipped)."""
    return [ln.split() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def write_sentences(path, sentences: Iterable[Sequence[str]]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for s in sentences:
            f.write(" ".join(s) + "\n")
    return path


def synthetic_lm_sentences(plan_path, text_dir: Optional[str] = None) -> List[List[str]]:
    """LM text for the synthetic corpus: every fortune sentence (same extraction and the
    plan's min/max words) except the sentences of the dev and test splits.

    The held-out (OOV) words stay known to the LM through the unused fortune sentences
    that contain them, as a deployed LM knows words the acoustic model never heard;
    no dev/test sentence itself is in the text.
    """
    plan = load_plan(Path(plan_path))
    cfg = plan.config
    held = {" ".join(u.words) for u in plan.utterances if u.split in ("dev", "test")}
    sents = fortune_sentences(text_dir or cfg.text_dir, cfg.min_words, cfg.max_words)
    return [s for s in sents if " ".join(s) not in held]


def corpus_transcripts(data_dir, corpus: str, split: str) -> List[List[str]]:
    """The normalised transcripts of one split (``manifests/{corpus}_supervisions_{split}.jsonl.gz``)."""
    import gzip
    import json

    p = Path(data_dir) / "manifests" / f"{corpus}_supervisions_{split}.jsonl.gz"
    if not p.is_file():
        raise LmError(f"{p}: missing (prepare {corpus} first)")
    with gzip.open(p, "rt", encoding="utf-8") as f:
        return [json.loads(ln)["text"].split() for ln in f if ln.strip()]


def corpus_lm_sentences(
    data_dir,
    corpus: str,
    held_out_splits: Sequence[str] = ("dev", "test"),
    extra: Sequence[Sequence[str]] = (),
) -> List[List[str]]:
    """LM text for a prepared corpus: its train transcripts plus ``extra`` sentences, minus
    every sentence that occurs in a held-out split (so dev/test are never in the LM)."""
    held = {" ".join(s) for split in held_out_splits for s in corpus_transcripts(data_dir, corpus, split)}
    return [list(s) for s in list(extra) + corpus_transcripts(data_dir, corpus, "train") if " ".join(s) not in held]


def speechocean762_lm_sentences(manifest_dir, text_dir: Optional[str] = None) -> List[List[str]]:
    """LM text for speechocean762: fortune sentences + the train-split transcripts, minus
    every sentence that occurs in the dev split (the corpus has no test split)."""
    return corpus_lm_sentences(manifest_dir, "speechocean762", ("dev",), extra=fortune_sentences(text_dir))


def normalize_lm_words(lm: NgramLM) -> NgramLM:
    """The same model with every word in our spelling (rescorer.text: ``DON'T`` -> ``don't``),
    so that an existing ARPA (e.g. LibriSpeech's upper-case 3-gram) matches the lexicon.
    ``<s>``, ``</s>`` and ``<unk>`` (any case) are kept; a word that is not spellable or
    two words that become one raise LmError naming them."""
    mapping: Dict[str, str] = {}
    seen: Dict[str, str] = {}
    for w in lm.vocabulary:
        if w.lower() in (BOS, EOS, UNK):
            mapping[w] = w.lower()
            continue
        try:
            n = normalize_word(w)
        except NotAWordError as e:
            raise LmError(f"LM word {w!r} cannot be spelled with the letter tokens: {e}") from None
        if n in seen:
            raise LmError(f"LM words {seen[n]!r} and {w!r} both normalise to {n!r}")
        seen[n] = w
        mapping[w] = n
    if all(k == v for k, v in mapping.items()):
        return lm

    def conv(table):
        return {tuple(mapping[w] for w in g): v for g, v in table.items()}

    return NgramLM(lm.order, [conv(p) for p in lm.probs], [conv(b) for b in lm.backoffs], dict(lm.meta, normalized=True))


def lm_oov_rate(lm_words: Iterable[str], test_words: Iterable[str]) -> Dict[str, object]:
    """Share of test word types and tokens that the LM vocabulary lacks."""
    vocab = set(lm_words)
    toks = list(test_words)
    types = set(toks)
    miss_types = sorted(types - vocab)
    miss_tok = sum(w not in vocab for w in toks)
    return {
        "type_oov_rate": len(miss_types) / len(types) if types else 0.0,
        "token_oov_rate": miss_tok / len(toks) if toks else 0.0,
        "test_types": len(types),
        "missing_types": len(miss_types),
        "missing_examples": miss_types[:20],
    }
