"""Sentence encoders: the BERT configuration (``config``), the torch model (``bert``), the
encoder API (``encoder``), the ONNX export and ONNX Runtime session (``onnx``).
"""
