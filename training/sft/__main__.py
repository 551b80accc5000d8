"""`python -m training.sft ...` = `casseat-edge train ...`; the entry point for launchers:

torchrun --nproc_per_node 2 -m training.sft --data synth --model tiny:smolvlm --out sft
accelerate launch -m training.sft --data synth --model tiny:smolvlm --out sft
"""

from __future__ import annotations

import sys

from casseat_cli.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="casseat-edge")
