"""Fine-tuning pretrained LLMs: supervised data with loss masks (``sft``), LoRA and QLoRA
training through the one loop and merging (``lora``), NF4 base weights (``nf4``). The LoRA
layer and PEFT-layout adapter files live in ``nlpkit.lm.lora`` (generation loads adapters).

Depends on everything above it (``lm``, ``llm``, ``data``...). Modules are imported by name.
"""
