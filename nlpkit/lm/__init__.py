"""Language models from scratch: configs (``config``), layers (``layers``), the Llama-family
decoder (``llama``), LSTM and encoder-decoder (``seqmodels``), the KV cache (``kv_cache``),
building, saving and loading (``model``); ``train/`` holds the one training loop.
"""
