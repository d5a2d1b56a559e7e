"""The phone set (ARPAbet without stress, as in CMUdict) and espeak-ng's English mnemonics mapped to it.

Words that the dictionary lacks get their phones from espeak-ng's G2P, which speaks its
own phoneme mnemonics ("k 'a t" for "cat"); ``ESPEAK_TO_ARPABET`` maps each en-us mnemonic
to zero, one or two ARPAbet phones, so that both sources give phones of one set. The
table was filled from every mnemonic espeak-ng 1.51 says for the words of CMUdict, and
each choice was checked against CMUdict's own transcriptions of those words
(``benchmarks/g2p_agreement.py`` -> ``results/g2p_agreement.json``: phone error rate of
the mapped espeak-ng output against CMUdict).

Choices worth knowing: r-coloured vowels become vowel + R ("A@" car -> AA R), as CMUdict
writes them; espeak's flap (t#) and glottal stop (?) are T, its syllabic consonants
("n-", "@L") are AH + consonant (CMUdict "button" B AH T AH N); linking r ("r-") and the
palatal mark (";") are dropped; an R right after ER or R is dropped (CMUdict "hurry"
HH ER IY, where espeak says "h 3: r i"). A mnemonic the table lacks is read as its base
phoneme without length or variant marks ("x:" as "x", "t#" as "t"); one with no base in
the table is an error naming it. Random letter strings (60k) and the 235k words of
``large_word_list()`` that CMUdict lacks are covered.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

# the 39 phones of CMUdict without stress digits
PHONES: Tuple[str, ...] = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY",
    "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y",
    "Z", "ZH",
)  # fmt: skip
PHONE_SET = frozenset(PHONES)

# espeak-ng en-us mnemonic (stress marks removed) -> ARPAbet phones
ESPEAK_TO_ARPABET: Dict[str, Tuple[str, ...]] = {
    # consonants
    "p": ("P",), "b": ("B",), "t": ("T",), "t#": ("T",), "t2": ("T",), "d": ("D",), "d#": ("D",),
    "k": ("K",), "g": ("G",), "x": ("K",), "C": ("K",), "?": ("T",),
    "f": ("F",), "v": ("V",), "T": ("TH",), "D": ("DH",), "s": ("S",), "z": ("Z",), "S": ("SH",),
    "Z": ("ZH",), "tS": ("CH",), "dZ": ("JH",), "h": ("HH",),
    "m": ("M",), "n": ("N",), "N": ("NG",), "l": ("L",), "r": ("R",), "j": ("Y",), "w": ("W",),
    "l#": ("L",), "n-": ("AH", "N"), "m-": ("AH", "M"), "l-": ("AH", "L"),
    "r-": (), ";": (), "|": (), "!": (),
    # vowels
    "a": ("AE",), "aa": ("AE",), "a#": ("AH",), "A:": ("AA",), "a:": ("AA",), "A@": ("AA", "R"), "0": ("AA",),
    "O2": ("AA",), "O:": ("AO",), "O@": ("AO", "R"), "o@": ("AO", "R"), "O": ("AO",),
    "V": ("AH",), "@": ("AH",), "@2": ("AH",), "@5": ("AH",), "@-": ("AH",), "@L": ("AH", "L"),
    "3": ("ER",), "3:": ("ER",), "E": ("EH",), "E2": ("EH",), "e@": ("EH", "R"), "e": ("EH",),
    "I": ("IH",), "I2": ("IH",), "I#": ("IH",), "i": ("IY",), "i:": ("IY",), "i::": ("IY",),
    "i@": ("IY", "AH"), "i@3": ("IH", "R"),
    "U": ("UH",), "U@": ("UH", "R"), "u:": ("UW",), "u": ("UW",),
    "aI": ("AY",), "aI@": ("AY", "AH"), "aI3": ("AY", "ER"), "aU": ("AW",), "aU@": ("AW", "ER"),
    "eI": ("EY",), "oU": ("OW",), "o": ("OW",), "OI": ("OY",),
    # nasal vowels of French loans
    "A~": ("AA",), "O~": ("AO",), "E~": ("EH",), "V~": ("AH",),
}  # fmt: skip

_STRESS_MARKS = "',%="


class UnmappedPhonemeError(ValueError):
    """An espeak-ng mnemonic the table does not know (another espeak version or language?)."""


def strip_stress(phone: str) -> str:
    """ARPAbet without the stress digit ("AH0" -> "AH")."""
    return phone.rstrip("012")


def espeak_to_arpabet(mnemonics: Sequence[str], word: str = "") -> List[str]:
    """ARPAbet phones of one word's espeak mnemonics; raises UnmappedPhonemeError naming an unknown one."""
    out: List[str] = []
    for m in mnemonics:
        bare = m.strip(_STRESS_MARKS)
        if not bare:
            continue
        phones = ESPEAK_TO_ARPABET.get(bare)
        if phones is None:  # a variant the table lacks: its base phoneme without length/variant marks
            phones = ESPEAK_TO_ARPABET.get(bare.rstrip(":#0123456789") or bare)
        if phones is None:
            raise UnmappedPhonemeError(
                f"espeak-ng phoneme {bare!r} (in {word or ' '.join(mnemonics)!r}) has no ARPAbet mapping"
            )
        for p in phones:
            if p == "R" and out and out[-1] in ("R", "ER"):
                continue  # CMUdict writes no extra R after an r-coloured vowel
            out.append(p)
    return out
