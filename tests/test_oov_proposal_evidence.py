"""benchmarks/oov_proposal_evidence.py: the ranking figures each abstention rule is judged by."""

import sys

import numpy as np

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from oov_proposal_evidence import rank_fraction, ranking_metrics  # noqa: E402


def test_ranking_metrics_on_known_orders():
    labels = np.array([1, 0, 1, 0, 0, 0])
    perfect = ranking_metrics(np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.0]), labels)
    assert perfect["auc"] == 1.0 and perfect["average_precision"] == 1.0
    assert perfect["precision_at_10"] == round(2 / 6, 4)  # fewer proposals than 10: all of them
    assert perfect["right_kept_at_precision_0.8"] == 2
    worst = ranking_metrics(np.array([0.0, 0.9, 0.1, 0.8, 0.7, 0.6]), labels)
    assert worst["auc"] == 0.0 and worst["right_kept_at_precision_0.8"] == 0
    # right at ranks 1 and 3: AP = (1/1 + 2/3) / 2; precision 0.8 keeps the first only, 0.5 both
    mixed = ranking_metrics(np.array([0.9, 0.8, 0.7, 0.1, 0.05, 0.0]), labels)
    assert mixed["average_precision"] == round((1 + 2 / 3) / 2, 4)
    assert mixed["right_kept_at_precision_0.8"] == 1 and mixed["right_kept_at_precision_0.5"] == 2
    assert mixed["auc"] == round(7 / 8, 4)  # 8 right-wrong pairs, one misordered


def test_rank_fractions_share_ties_and_order_like_the_scores():
    r = rank_fraction(np.array([0.5, 0.1, 0.9, 0.5]))
    assert list(r) == [2.5 / 4, 1 / 4, 1.0, 2.5 / 4]  # the two 0.5s share ranks 2 and 3
    # two views averaged: a proposal first in both stays first
    both = (rank_fraction(np.array([3.0, 1.0, 2.0])) + rank_fraction(np.array([-1.0, -5.0, -3.0]))) / 2
    assert int(np.argmax(both)) == 0 and int(np.argmin(both)) == 1


def test_edited_text_puts_the_proposal_in_place_of_the_words_on_its_span():
    from oov_proposal_evidence import edited_text
    from rescorer.lattice.paths import WordSpan as W

    hyp = [W("the", 0.0, 0.2), W("cat", 0.2, 0.4), W("a", 0.4, 0.5), W("man", 0.5, 0.8), W("sailed", 0.8, 1.2)]
    assert edited_text(hyp, 0.2, 0.8, "catamaran") == "the catamaran sailed"
    assert edited_text(hyp, 1.3, 1.5, "today") == "the cat a man sailed today"  # nothing overlaps: in time order
    assert edited_text([W("sat", 0.5, 0.7)], 0.1, 0.3, "zebra") == "zebra sat"
