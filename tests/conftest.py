import os

import torch

# Tests are tiny: one thread each keeps the 2-core CI machine responsive and results stable. The
# runner's thread policy (runtime/threads.py) would pick a count from the load; the variable holds
# it at one here and in the commands the tests start.
torch.set_num_threads(1)
os.environ.setdefault("NEXTDIT_THREADS", "1")
