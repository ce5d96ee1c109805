"""Quantized models served by ONNX Runtime: the decoder as an ONNX graph (``graph``), weight
quantization (``quantize``) and the quality receipt (``receipt``)."""
