"""Word lattices: the k2 word-lattice representation (word_lattice), HTK SLF import (slf),
pocketsphinx lattices (pocketsphinx). Word lattices of k2 token (HLG) lattices come from
``rescorer.decoding.decode.word_lattice_arcs`` (spans by traversal; its best path equals
the token lattice's 1-best, tested).

k2 is imported lazily inside functions, so ``rescorer.lattice.slf`` parsing works without it.
"""

from rescorer.lattice.word_lattice import (  # noqa: F401
    FORMAT,
    Hypothesis,
    WordLattice,
    WordLatticeError,
    WordSpan,
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
    rescale,
    save_word_lattices,
    table_digest,
    validate,
    word_confidences,
)
