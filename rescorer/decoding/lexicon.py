"""Symbol tables and the letter lexicon L (built directly as a k2 FSA).

Symbol tables (k2 ``SymbolTable`` text format, ``symbol id`` per line):

- ``tokens.txt``: the 29 ASR tokens of ``rescorer.tokens`` (``<blk>`` = 0, ``|`` = 1,
  ``'``, a-z) then the token-side disambiguation symbols ``#0`` (G back-off) and ``#1``
  (ends the ``<unk>`` letter loop; see below).
- ``words.txt``: ``<eps>`` = 0, ``<unk>`` = 1, the LM's words sorted, then ``#0``,
  ``<s>``, ``</s>`` (icefall's layout; ``#0`` and above are never real words).

Lexicon: every word is spelled by its letters followed by the boundary token ``|``
(``cat`` -> ``c a t |``). Spellings are unique and no spelling is a prefix of another
(each ends in ``|``), so words need no disambiguation symbols. ``<unk>`` is a letter
loop: one or more letters, then ``#1``, then ``|``. Its token sequences overlap every
word's, so ``#1`` keeps L o G functional (determinizable); it becomes epsilon in HLG.
Putting ``#1`` before ``|`` resolves "word or ``<unk>``" by the word's own ``|``, so
after determinization every word label sits on an arc within its own letters (first
letter .. ``|``), never on the next word's arcs: ``decode.word_lattice_arcs`` relies
on this.
Entering the loop costs ``unk_penalty`` (natural log, subtracted from the score) and
each letter in it ``unk_letter_penalty``: the knobs that decide when an out-of-LM word
surfaces as ``<unk>`` instead of being forced onto an LM word.

L (k2 FSA: ``labels`` = tokens, ``aux_labels`` = words), loop state 0:
    0 --c:cat--> s1 --a:eps--> s2 --t:eps--> s3 --|:eps--> 0          (each word)
    0 --l:<unk>--> U,  U --l:eps--> U  (l in ' a-z),  U --#1:eps--> V --|:eps--> 0
    0 --#0:#0--> 0    (passes G's back-off arcs),     0 final.
Each word is its own chain with the word label on the first arc (a Kaldi-style
lexicon FST); determinization of L o G shares prefixes and delays labels as needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Tuple

from rescorer.formats.contract import UNK
from rescorer.text import LETTERS
from rescorer.tokens import BOUNDARY_ID, TOKEN_ID, TOKENS

EPS = "<eps>"
BOS = "<s>"
EOS = "</s>"
WORD_DISAMBIG = "#0"
TOKEN_DISAMBIG = ("#0", "#1")
SPECIAL_WORDS = (EPS, UNK, WORD_DISAMBIG, BOS, EOS)


class LexiconError(ValueError):
    pass


def token_table() -> Dict[str, int]:
    t = {tok: i for i, tok in enumerate(TOKENS)}
    for j, d in enumerate(TOKEN_DISAMBIG):
        t[d] = len(TOKENS) + j
    return t


def word_table(words: Iterable[str]) -> Dict[str, int]:
    """words.txt mapping for LM words (specials and non-words are dropped and checked)."""
    real = sorted({w for w in words if w not in SPECIAL_WORDS})
    for w in real:
        bad = [c for c in w if c not in LETTERS]
        if bad:
            raise LexiconError(f"word {w!r} has characters outside the token set: {bad!r} (LM text must be normalised)")
    table = {EPS: 0, UNK: 1}
    for w in real:
        table[w] = len(table)
    for s in (WORD_DISAMBIG, BOS, EOS):
        table[s] = len(table)
    return table


def write_symbol_table(path, table: Dict[str, int]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s} {i}\n" for s, i in sorted(table.items(), key=lambda x: x[1])), encoding="utf-8")
    return path


def read_symbol_table(path) -> Dict[str, int]:
    table: Dict[str, int] = {}
    for n, ln in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not ln.strip():
            continue
        parts = ln.split()
        if len(parts) != 2:
            raise LexiconError(f"{path}:{n}: expected 'symbol id', got {ln!r}")
        try:
            table[parts[0]] = int(parts[1])
        except ValueError:
            raise LexiconError(f"{path}:{n}: id {parts[1]!r} is not an integer") from None
    return table


def spell(word: str) -> List[int]:
    return [TOKEN_ID[c] for c in word] + [BOUNDARY_ID]


def write_lexicon(path, words: Dict[str, int]) -> Path:
    """lexicon.txt: ``word t1 t2 ... |`` per real word, and ``<unk> <letter-loop> |``."""
    lines = [f"{UNK} <letter-loop> |"]
    lines += [f"{w} {' '.join(w)} |" for w in words if w not in SPECIAL_WORDS]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def lexicon_arcs(
    words: Dict[str, int], unk_penalty: float = 0.0, unk_letter_penalty: float = 0.0
) -> Tuple[List[Tuple[int, int, int, int, float]], int]:
    """Arcs (src, dst, token, word, score) of L and its final state id (before the final arc)."""
    tok = token_table()
    arcs: List[Tuple[int, int, int, int, float]] = []
    next_state = 1
    for w, wid in words.items():
        if w in SPECIAL_WORDS:
            continue
        ids = spell(w)
        s = 0
        for j, t in enumerate(ids):
            last = j == len(ids) - 1
            if j == 0:
                # word label on the first arc: one arc per word out of the loop state
                if last:
                    raise LexiconError(f"empty word {w!r}")
                d = next_state
                next_state += 1
                arcs.append((0, d, t, wid, 0.0))
                s = d
                continue
            if last:
                arcs.append((s, 0, t, 0, 0.0))
                break
            d = next_state
            next_state += 1
            arcs.append((s, d, t, 0, 0.0))
            s = d
    # <unk> letter loop
    U, V = next_state, next_state + 1
    next_state += 2
    letters = [TOKEN_ID[c] for c in LETTERS]
    for t in letters:
        arcs.append((0, U, t, words[UNK], -float(unk_penalty) - float(unk_letter_penalty)))
    for t in letters:
        arcs.append((U, U, t, 0, -float(unk_letter_penalty)))
    arcs.append((U, V, tok["#1"], 0, 0.0))
    arcs.append((V, 0, BOUNDARY_ID, 0, 0.0))
    arcs.append((0, 0, tok["#0"], words[WORD_DISAMBIG], 0.0))
    return arcs, next_state


def make_L(words: Dict[str, int], unk_penalty: float = 0.0, unk_letter_penalty: float = 0.0):
    """The lexicon FSA (k2.Fsa, labels = tokens, aux_labels = words), arc-sorted."""
    import k2
    import torch

    arcs, final = lexicon_arcs(words, unk_penalty, unk_letter_penalty)
    arcs = sorted(arcs, key=lambda a: (a[0], a[2]))
    arcs.append((0, final, -1, -1, 0.0))
    arcs.sort(key=lambda a: a[0])
    src = torch.tensor([a[0] for a in arcs], dtype=torch.int32)
    dst = torch.tensor([a[1] for a in arcs], dtype=torch.int32)
    lab = torch.tensor([a[2] for a in arcs], dtype=torch.int32)
    aux = torch.tensor([a[3] for a in arcs], dtype=torch.int32)
    score = torch.tensor([a[4] for a in arcs], dtype=torch.float32)
    arcs_t = torch.stack([src, dst, lab, score.view(torch.int32)], dim=1)
    fsa = k2.Fsa(arcs_t.contiguous(), aux_labels=aux)
    return k2.arc_sort(fsa)
