"""Word lattices: the k2 word-lattice representation (word_lattice), the score combination
(scores: ``Scales``, ``with_scores``), many lattices decoded together under many scores
(batch: ``LatticeBatch``), editing (edit: ``add_arcs`` and friends), paths
(paths: ``Hypothesis``, n-best sampling, attention re-ranking), HTK SLF import (slf),
pocketsphinx lattices (pocketsphinx). Word lattices of k2 token (HLG) lattices come from
``rescorer.decoding.decode.word_lattice_arcs`` (spans by traversal; its best path equals
the token lattice's 1-best, tested).

k2 is imported lazily inside functions, so ``rescorer.lattice.slf`` parsing works without it.
"""

from rescorer.lattice.edit import add_arcs, extend_table, new_arc_mask, with_table  # noqa: F401
from rescorer.lattice.paths import Hypothesis, WordSpan, best_with_attention, sample_paths  # noqa: F401
from rescorer.lattice.scores import Scales, combine, with_scores  # noqa: F401
from rescorer.lattice.word_lattice import (  # noqa: F401
    FORMAT,
    WordLattice,
    WordLatticeError,
    arc_posteriors,
    best_path,
    best_path_hypothesis,
    build_word_lattice,
    contains_path,
    from_arrays,
    from_k2,
    load_word_lattices,
    make_word_table,
    nbest,
    oracle_path,
    prune,
    rescale,
    save_word_lattices,
    table_digest,
    validate,
    word_confidences,
)
