"""Text: tokenizers (``tokenizer``, ``tokenizer_train``), documents to plain text and chunks
(``documents``), chat templates and message checks (``chat_template``). No torch.
"""
