"""Corpora as lhotse manifests with word alignments: one ``prepare_x()`` per corpus."""
