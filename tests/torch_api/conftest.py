from __future__ import annotations

import torch

# Two shared cores: one intra-op thread is faster than two that contend.
torch.set_num_threads(1)
