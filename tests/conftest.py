import warnings

import torch

warnings.filterwarnings("ignore", message=r".*is found to be not a nn\.Module.*", category=RuntimeWarning)
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
