"""Accuracy against the number of distinct training images: a plain ViT vs a small ResNet (notebook 10).

The paper's central lesson (Dosovitskiy et al. 2020, Sec. 4.2-4.3, Figs. 3-4), measured at toy scale by
``vit_edu.training.data_size`` (the notebook reruns a reduced sweep with the same code):

    python benchmarks/data_size_sweep.py                 # the full sweep (resumes: finished runs are skipped)
    python benchmarks/data_size_sweep.py --fresh         # start over
    python benchmarks/data_size_sweep.py --sizes 200,2000 --seeds 0 --models vit,cnn --out /tmp/s.json
    python benchmarks/data_size_sweep.py --patch-shuffle-seed 1 --out vit_edu/assets/data_size_sweep_shuffled.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vit_edu.training.data_size import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
