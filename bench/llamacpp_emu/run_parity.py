"""Greedy parity of a bit-exact emulation of llama.cpp's CPU kernels (this machine's build:
AVX512/VNNI, GCC, llamafile, no flash attention, f16 KV cache) with llama.cpp itself, on the
SmolLM2 Q4_1 file. A research tool: it shows that nlpkit's remaining difference from llama.cpp
on Q4_1 weights is llama.cpp's 8-bit activation rounding, not the model or the conversion.
Slow (seconds to minutes per prompt). Needs bench/.cache/llama_ref.json from
`python bench/bench_chat.py` (it writes the llama.cpp references), or pass a file.

    python bench/llamacpp_emu/run_parity.py [REFERENCE.json]
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import torch  # noqa: E402
from llamaemu import LlamaCppEmu  # noqa: E402

here = Path(__file__).resolve().parent.parent
ref = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else here / ".cache" / "llama_ref.json").read_text())
emu, ok, worst, rows = LlamaCppEmu(), 0, 0.0, []
for r in ref:
    t0 = time.time()
    emu.reset()
    logits = emu.forward(r["prompt_ids"])[-1]
    diff = float((logits[r["top5"]] - torch.tensor(r["top5_logits"])).abs().max())
    gen: list[int] = []
    while len(gen) < len(r["greedy"]) + 1 and len(gen) < 64:
        t = int(logits.argmax())
        if t == 2:
            break
        gen.append(t)
        logits = emu.forward([t])[-1]
    same = gen == r["greedy"]
    ok, worst = ok + same, max(worst, diff)
    rows.append({"question": r["question"], "greedy_equal": same, "top5_max_diff": diff})
    print(f"{r['question'][:40]:40s} top5 diff {diff:.2e} {'EQUAL' if same else 'differs'} {time.time() - t0:.0f}s")
out = {"prompts": len(ref), "greedy_equal": ok, "top5_max_diff": worst, "rows": rows}
(here / "results").mkdir(exist_ok=True)
(here / "results" / "parity_llamacpp_emu.json").write_text(json.dumps(out, indent=2) + "\n")
print(f"llamacpp-emu: greedy_equal={ok}/{len(ref)} top5_max_diff={worst:.2e}")
