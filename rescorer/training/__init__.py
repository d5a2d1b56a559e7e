"""Training of the word embedders: data (``word_data``), loss (``ranking``), entry point
(``train_embeddings``). Plain torch only: nothing here imports lhotse or k2, because
training runs on machines that have neither.
"""
