"""Score FT presets on zsRE with the ROME/MEMIT convention (target_new = answers[0]; token
accuracy on src, rephrase, and loc + "?" vs loc_ans), one edit at a time.

    .venv/bin/python bench/eval_zsre.py --n 100 --preset default --preset smollm2-ft-l \
        --unedited --out bench/results/zsre

The same script as eval_counterfact.py with ``--dataset zsre``; see it for the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_counterfact import main

if __name__ == "__main__":
    main(["--dataset", "zsre", *sys.argv[1:]])
