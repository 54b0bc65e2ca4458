import torch

# Tests are tiny: one thread each keeps the 2-core CI machine responsive and results stable.
torch.set_num_threads(1)
