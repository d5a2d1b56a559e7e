"""Decoding graphs: H (CTC topology), L (letter lexicon), G (word n-gram) -> HLG.

``compile_hlg`` is the icefall-style compile, written here: arc-sort L and G,
LG = compose(L, G) (L's words matched to G's words), connect, determinize (k2's
determinize of the token acceptor, words carried as ragged aux labels), connect,
disambiguation symbols (token ``#0``/``#1``, word ``#0``) -> epsilon, remove epsilons,
connect, drop 0s from the aux labels, arc-sort; HLG = compose(H, LG) with the inner
labels kept as the per-arc attribute ``tokens``; connect, arc-sort. k2 has no
minimisation (icefall does none either); determinization already shares the word
prefixes. ``HLG.lm_scores`` is a copy of the graph scores (LM log-probs in natural log
plus ``<unk>`` penalties) so decoding can split lattice scores into AM and LM parts.

Lang directory (``build_lang_dir`` / the CLI)::

    rescorer graphs --lm-text text.txt --out exp/lang [--order 3]
    rescorer graphs --synthetic-plan data/syn/plan.json --out exp/lang
    rescorer graphs --speechocean762 data/so762 --out exp/lang
    rescorer graphs --transcripts data/librispeech --corpus librispeech [--lm-text more.txt] --out exp/lang
    rescorer graphs --arpa 3-gram.pruned.1e-7.arpa --out exp/lang

writes ``lm_text.txt`` (the LM's sentences), ``lm.arpa`` (rescorer.decoding.lm estimator),
``tokens.txt``, ``words.txt`` (k2 SymbolTable format), ``lexicon.txt``, ``G.fst.txt``
(kaldilm, OpenFst text), ``HLG.pt`` (``HLG.as_dict()``) and ``lang.json`` (settings,
sizes, the text source). k2 is imported only inside the functions that need it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from rescorer.decoding import lexicon as lex
from rescorer.decoding import lm as lmmod
from rescorer.formats.tagged import load_plain
from rescorer.tokens import TOKENS

log = logging.getLogger(__name__)

LANG_FORMAT = "rescorer.lang/1"
# Cost (nats) per letter inside <unk>. Without it, on noisy CTC output the free letter
# loop can swallow several words at once (one long <unk>); 1.0 kept word-sized <unk>
# spans on noisy synthetic log-probs. Tune on dev together with --unk-penalty.
DEFAULT_UNK_LETTER_PENALTY = 1.0


def compile_hlg(L, G, token_disambig_start: int, word_disambig_start: int, max_token_id: int = len(TOKENS) - 1):
    """HLG from L (labels = tokens incl. disambig, aux = words) and G (labels = aux = words)."""
    import k2
    import torch

    L = k2.arc_sort(L)
    G = k2.arc_sort(G)
    LG = k2.connect(k2.compose(L, G))
    if LG.num_arcs == 0:
        raise RuntimeError("L o G is empty: the lexicon and the LM share no words")
    LG = k2.connect(k2.determinize(LG))
    labels = LG.labels.clone()
    labels[labels >= token_disambig_start] = 0
    LG.labels = labels
    LG.__dict__["_properties"] = None
    if isinstance(LG.aux_labels, torch.Tensor):
        aux = LG.aux_labels.clone()
        aux[aux >= word_disambig_start] = 0
        LG.aux_labels = k2.RaggedTensor(aux.unsqueeze(1).tolist())  # uniform handling below
    else:
        LG.aux_labels.values[LG.aux_labels.values >= word_disambig_start] = 0
    LG = k2.remove_epsilon(LG)
    LG = k2.connect(LG)
    LG.aux_labels = LG.aux_labels.remove_values_eq(0)
    LG = k2.arc_sort(LG)
    H = k2.ctc_topo(max_token_id, modified=False)
    HLG = k2.connect(k2.compose(H, LG, inner_labels="tokens"))
    HLG = k2.arc_sort(HLG)
    HLG.lm_scores = HLG.scores.clone()
    return HLG


def load_G(fst_text_path):
    import k2

    return k2.Fsa.from_openfst(Path(fst_text_path).read_text(encoding="utf-8"), acceptor=False)


@dataclass
class Lang:
    dir: Path
    words: Dict[str, int]
    tokens: Dict[str, int]
    HLG: object  # k2.Fsa
    config: dict

    @property
    def id2word(self) -> Dict[int, str]:
        return {i: w for w, i in self.words.items()}

    def real_words(self) -> List[str]:
        return [w for w in self.words if w not in lex.SPECIAL_WORDS]


def build_lang_dir(
    sentences: Sequence[Sequence[str]],
    out,
    order: int = 3,
    unk_penalty: float = 0.0,
    unk_letter_penalty: float = DEFAULT_UNK_LETTER_PENALTY,
    source: str = "",
    build_hlg: bool = True,
    lm: Optional[lmmod.NgramLM] = None,
) -> Path:
    """Write the lang directory; the LM is estimated from ``sentences`` unless an existing
    ``lm`` (e.g. read from an ARPA file, words normalised) is given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if lm is None:
        lmmod.write_sentences(out / "lm_text.txt", sentences)
        lm = lmmod.estimate_kneser_ney(sentences, order)
    order = lm.order
    lm.write_arpa(out / "lm.arpa")
    words = lex.word_table(lm.vocabulary)
    tokens = lex.token_table()
    lex.write_symbol_table(out / "words.txt", words)
    lex.write_symbol_table(out / "tokens.txt", tokens)
    lex.write_lexicon(out / "lexicon.txt", words)
    lmmod.arpa_to_fst_text(out / "lm.arpa", out / "words.txt", out / "G.fst.txt")
    cfg = {
        "format": LANG_FORMAT,
        "order": order,
        "unk_penalty": unk_penalty,
        "unk_letter_penalty": unk_letter_penalty,
        "lm_estimator": lm.meta.get("estimator", f"ARPA file {lm.meta.get('path')}"),
        "lm_discounts": lm.meta.get("discounts"),
        "lm_sentences": len(sentences),
        "lm_ngrams": lm.num_ngrams(),
        "vocabulary": len(words) - len(lex.SPECIAL_WORDS),
        "text_source": source,
    }
    if build_hlg:
        import torch

        L = lex.make_L(words, unk_penalty, unk_letter_penalty)
        G = load_G(out / "G.fst.txt")
        HLG = compile_hlg(L, G, tokens["#0"], words[lex.WORD_DISAMBIG])
        torch.save(HLG.as_dict(), out / "HLG.pt")
        cfg["HLG"] = {"states": int(HLG.shape[0]), "arcs": int(HLG.num_arcs)}
    cfg["build_seconds"] = round(time.time() - t0, 1)
    (out / "lang.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def load_lang_dir(lang_dir) -> Lang:
    import k2

    d = Path(lang_dir)
    for f in ("words.txt", "tokens.txt", "HLG.pt"):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d / f}: missing; build the lang dir with `rescorer graphs`")
    words = lex.read_symbol_table(d / "words.txt")
    tokens = lex.read_symbol_table(d / "tokens.txt")
    if [tokens.get(t) for t in TOKENS] != list(range(len(TOKENS))):
        raise ValueError(f"{d / 'tokens.txt'} does not match the ASR token set of rescorer.tokens")
    # plain data only (a lang dir is handed around like a model): tensors, and k2's ragged
    # aux_labels, whose unpickling only rebuilds its row splits and values
    HLG = k2.Fsa.from_dict(load_plain(d / "HLG.pt", "HLG graph", allowed={("_k2.ragged", "RaggedTensor"): k2.RaggedTensor}))
    if not hasattr(HLG, "lm_scores"):
        HLG.lm_scores = HLG.scores.clone()
    cfg = json.loads((d / "lang.json").read_text()) if (d / "lang.json").is_file() else {}
    return Lang(d, words, tokens, HLG, cfg)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="rescorer graphs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lm-text", action="append", default=[],
                    help="one sentence per line, normalised words separated by spaces (repeatable or comma-separated; adds to --transcripts)")
    ap.add_argument("--transcripts", metavar="DATA_DIR",
                    help="a prepared corpus (with --corpus): its train transcripts, minus dev/test sentences")
    ap.add_argument("--corpus", help="manifest prefix for --transcripts, e.g. librispeech")
    ap.add_argument("--held-out", default="dev,test", help="splits whose sentences --transcripts leaves out")
    ap.add_argument("--arpa", help="an existing ARPA LM (e.g. LibriSpeech's 3-gram); words are normalised to our spelling")
    ap.add_argument("--synthetic-plan", help="synthetic corpus plan.json: fortunes minus dev/test sentences")
    ap.add_argument("--speechocean762", help="prepared speechocean762 dir: fortunes + train minus dev sentences")
    ap.add_argument("--out", required=True)
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--unk-penalty", type=float, default=0.0, help="cost (nats) of entering the <unk> letter loop; negative favours <unk>")
    ap.add_argument("--unk-letter-penalty", type=float, default=DEFAULT_UNK_LETTER_PENALTY, help="cost (nats) per letter inside <unk>")
    ap.add_argument("--no-hlg", action="store_true", help="stop after G (no k2 needed)")
    a = ap.parse_args(argv)
    sources = [bool(a.lm_text or a.transcripts), bool(a.arpa), bool(a.synthetic_plan), bool(a.speechocean762)]
    if sum(sources) != 1:
        ap.error("give one LM source: --lm-text/--transcripts, --arpa, --synthetic-plan or --speechocean762")
    if bool(a.transcripts) != bool(a.corpus):
        ap.error("--transcripts and --corpus go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    lm = None
    sents: List[List[str]] = []
    try:
        if a.arpa:
            lm = lmmod.normalize_lm_words(lmmod.read_arpa(a.arpa))
            source = f"ARPA file {a.arpa}"
        elif a.synthetic_plan:
            sents = lmmod.synthetic_lm_sentences(a.synthetic_plan)
            source = f"fortune sentences minus the dev/test sentences of {a.synthetic_plan}"
        elif a.speechocean762:
            sents = lmmod.speechocean762_lm_sentences(a.speechocean762)
            source = f"fortune sentences + speechocean762 train transcripts minus dev sentences ({a.speechocean762})"
        else:
            paths = [p for v in a.lm_text for p in v.split(",") if p]  # a recipe config's list arrives comma-joined
            extra = [s for path in paths for s in lmmod.read_sentences(path)]
            parts = [f"text file {p}" for p in paths]
            if a.transcripts:
                held = [x for x in a.held_out.split(",") if x]
                sents = lmmod.corpus_lm_sentences(a.transcripts, a.corpus, held, extra=extra)
                parts.append(f"{a.corpus} train transcripts ({a.transcripts}), minus {'/'.join(held)} sentences")
            else:
                sents = extra
            source = " + ".join(parts)
        out = build_lang_dir(sents, a.out, a.order, a.unk_penalty, a.unk_letter_penalty, source, not a.no_hlg, lm=lm)
    except (lmmod.LmError, lmmod.ArpaError, lex.LexiconError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(json.loads((out / "lang.json").read_text()), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
