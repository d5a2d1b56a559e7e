"""Word normalisation and letter n-grams, shared by corpora, the letter encoder and lattices.

One spelling convention everywhere, so that a word from a transcript, a lattice
symbol table or a big word list maps to the same letter-n-gram embedding:

- lower case (Unicode case folding, then NFKD with accents stripped: "Café" -> "cafe");
- letters a-z and the apostrophe are kept; typographic apostrophes become "'";
- leading/trailing apostrophes and hyphens are stripped ("'em" -> "em"); an inner
  hyphen splits a token into words at the transcript level (``split_words``);
- a token that still contains anything else (digits, symbols) is not a word:
  ``normalize_word`` raises ``NotAWordError`` naming it. Transcripts with digits are
  excluded from synthetic text rather than guessed at ("1984" has several readings).
- a recogniser's free text (``words_of``) is another matter: Whisper writes "14, 15, 18
  hours a day" for speech the references spell out, so its numbers are spelled the way
  they are most often said (``spell_numbers``, with num2words) rather than dropped.
"""

from __future__ import annotations

import re
import unicodedata
from typing import List

BOW = "<"  # begin-of-word mark in letter n-grams
EOW = ">"  # end-of-word mark
LETTERS = "abcdefghijklmnopqrstuvwxyz'"
_WORD_RE = re.compile(r"^[a-z']+$")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


class NotAWordError(ValueError):
    """A token that cannot be spelled with the letter alphabet (digits, symbols, empty)."""


def normalize_word(token: str) -> str:
    """Return the canonical spelling of one word token, or raise NotAWordError."""
    if not isinstance(token, str):
        raise NotAWordError(f"word must be a string, got {type(token).__name__}")
    t = unicodedata.normalize("NFKD", token.translate(_APOSTROPHES).casefold())
    t = "".join(c for c in t if not unicodedata.combining(c))
    t = t.strip("'-")
    if not t:
        raise NotAWordError(f"empty word (token {token!r})")
    if not _WORD_RE.match(t):
        raise NotAWordError(f"token {token!r} has characters outside a-z and apostrophe")
    return t


def is_word(token: str) -> bool:
    try:
        normalize_word(token)
        return True
    except NotAWordError:
        return False


def _tokens(text: str) -> List[str]:
    """Whitespace/hyphen-separated tokens of a transcript, sentence punctuation dropped."""
    text = re.sub(r'[.,;:!?"()\[\]{}]', " ", text.translate(_APOSTROPHES))
    return [t for t in re.split(r"[\s\-\u2013\u2014/]+", text) if t.strip("'")]


def split_words(text: str) -> List[str]:
    """Split a transcript into normalised words; raises NotAWordError on non-word tokens.

    Hyphens and whitespace separate words; sentence punctuation (.,;:!?"()) is dropped.
    """
    tokens = _tokens(text)
    if not tokens:
        raise NotAWordError(f"transcript has no words: {text!r}")
    return [normalize_word(t) for t in tokens]


# a number as written: optional currency sign, digits (thousands separated by commas or not),
# optional decimals, optional suffix (percent, ordinal, a decade's "s")
_NUMBER_RE = re.compile(r"(?<![\w.,])(\$|£|€)?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(%|st|nd|rd|th|'?s)?(?![\w])",
                        re.IGNORECASE)
_CURRENCY = {"$": "dollar", "£": "pound", "€": "euro"}


def _num2words():
    try:
        from num2words import num2words
    except ImportError as e:  # pragma: no cover - pinned in requirements/*.txt
        raise ImportError("spelling a recogniser's numbers needs the num2words package (pinned in "
                          "requirements/*.txt; scripts/setup.sh installs it)") from e
    return num2words


def _spell(match: "re.Match[str]") -> str:
    num2words = _num2words()
    sign, digits, decimals, suffix = match.groups()
    if len(digits) > 18:  # no reading worth guessing (and beyond num2words): left out as before
        return " "
    n = int(digits.replace(",", ""))
    suffix = (suffix or "").lower()
    if suffix in ("st", "nd", "rd", "th"):
        words = num2words(n, to="ordinal")
    elif "," not in digits and not decimals and not sign and len(digits) == 4 and 1100 <= n <= 2099 and suffix != "%":
        words = num2words(n, to="year")  # "1990" -> "nineteen ninety", "2005" -> "two thousand and five"
    else:
        words = num2words(n)
    if decimals:  # digit by digit: "3.14" -> "three point one four"
        words += " point " + " ".join(num2words(int(d)) for d in decimals)
    if suffix in ("s", "'s"):  # a decade: "1990s" -> "nineteen nineties"
        words = words[:-1] + "ies" if words.endswith("y") else words + "s"
    if suffix == "%":
        words += " percent"
    if sign:
        words += " " + _CURRENCY[sign] + ("" if n == 1 and not decimals else "s")
    return " " + words.replace(",", " ").replace("-", " ") + " "


_DIGIT_STRING_RE = re.compile(r"(?<![\w.,])(?:\d+(?:-\d+)+|0\d+)(?![\w])")  # "555-1234", "0351": codes


def _spell_digits(match: "re.Match[str]") -> str:
    num2words = _num2words()
    groups = match.group(0).split("-")
    if len(groups) == 2 and all(len(g) == 4 and 1100 <= int(g) <= 2099 for g in groups):  # "1990-1995": a range of years
        return " " + " to ".join(num2words(int(g), to="year") for g in groups).replace("-", " ") + " "
    return " " + " ".join(num2words(int(d)) for d in match.group(0) if d.isdigit()) + " "


def spell_numbers(text: str) -> str:
    """``text`` with its written numbers spelled out as they are most often said: "15" ->
    "fifteen", "1,500" -> "one thousand five hundred", "3rd" -> "third", "1990" and "1990s"
    -> "nineteen ninety(ies)" (four digits from 1100 to 2099 read as a year), "3.5%" -> "three
    point five percent", "$5" -> "five dollars"; codes digit by digit ("555-1234", "0351"), but
    "1990-1995" as a range of years.
    num2words (pinned) does the spelling."""
    return _NUMBER_RE.sub(_spell, _DIGIT_STRING_RE.sub(_spell_digits, text))


def words_of(text: str) -> List[str]:
    """The words of a recogniser's free text (``split_words``'s rules), its numbers spelled out
    (``spell_numbers``: Whisper writes "15" for "fifteen") and other tokens that are not words
    (symbols) left out instead of raising."""
    return [normalize_word(t) for t in _tokens(spell_numbers(text)) if is_word(t)]


def letter_ngrams(word: str, n_min: int = 1, n_max: int = 5) -> List[str]:
    """Letter n-grams of ``<word>`` for n in [n_min, n_max], with begin/end marks.

    The bare marks themselves are not n-grams: for "he" and n<=3 this gives
    h, e, <h, he, e>, <he, he> (and <he> for n=4).
    """
    w = BOW + word + EOW
    grams = []
    for n in range(n_min, n_max + 1):
        for i in range(len(w) - n + 1):
            g = w[i : i + n]
            if g in (BOW, EOW):
                continue
            grams.append(g)
    return grams


# English function words: closed-class words (articles, pronouns, determiners,
# prepositions, conjunctions, auxiliary and modal verbs, their contractions, and a few
# particles). OOV recovery never replaces a lattice arc that holds one of them
# (``RescoreConfig.oov_protect_function_words``): they are short, frequent, well modelled by
# the LM and acoustically weak, so a spelling that happens to be near their audio is far
# more often a false alarm than an unseen word (the "stopwords" guard of published
# custom-vocabulary spotters). Written out here rather than taken from an LM's most frequent
# words, so it does not change with the corpus.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any no every each either neither all both half
i me my mine myself you your yours yourself yourselves he him his himself she her hers herself
it its itself we us our ours ourselves they them their theirs themselves
who whom whose which what whatever whoever whichever
one ones other another such own
about above across after against along among around as at before behind below beneath
beside besides between beyond by down during except for from in inside into like near of off
on onto out outside over past since than through throughout till to toward towards under
underneath until unto up upon via with within without
and but or nor so yet if because although though unless whether while whereas
whereby wherever whenever when where why how then there here
be am is are was were been being have has had having do does did doing done
will would shall should can could may might must ought
not n't very too also just only even ever never still already again
i'm i've i'll i'd you're you've you'll you'd he's he'll he'd she's she'll she'd
it's it'll we're we've we'll we'd they're they've they'll they'd that's there's here's
what's who's let's isn't aren't wasn't weren't hasn't haven't hadn't doesn't don't didn't
won't wouldn't shan't shouldn't can't cannot couldn't mustn't mightn't
""".split())
