"""Word vectors: load/convert, analogy, similar (``wordvectors``), evaluation (``evaluate``),
word2vec training (``word2vec``, ``word2vec_corpus``, ``word2vec_trainer``).
"""
