"""Retrieval-augmented answers: the index store (``index``), incremental indexing
(``indexing``), retrieval and the answer prompt (``retrieval``), approximate search (``ann``).
"""
