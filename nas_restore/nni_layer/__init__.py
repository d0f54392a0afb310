"""The one thin layer through which nas-restore reaches NNI 3.0.

- :mod:`~nas_restore.nni_layer.setup`: the import-time set-up (warning filters, log routing);
- :mod:`~nas_restore.nni_layer.space`: the primitives spaces are written with (``ModelSpace``,
  ``LayerChoice``, ``Cell``, ...) and what the toolkit reads off a space; re-exported here, so a user's
  space imports ``from nas_restore.nni_layer import ModelSpace, LayerChoice``;
- :mod:`~nas_restore.nni_layer.runner`: the one-shot and multi-trial experiment runners (imports the
  training code; spaces never need it).
- :mod:`~nas_restore.nni_layer.supernet`: a one-shot run's trained supernet kept (``RUN/supernet.pt``),
  rebuilt, and run with its architecture fixed to one sample (``nas-restore trust``).
- :mod:`~nas_restore.nni_layer.ddp`: a one-shot search on several DDP processes: the architecture weights
  kept identical on every process (NNI's architecture optimisers step outside DDP), rank 0 writing the run.

The rest of the code, and every retrained model, works with plain torch modules and genotypes, so
another NNI version, or none at inference, only touches this package.
"""

from nas_restore.nni_layer.space import *  # noqa: F401,F403  (the primitives, with NNI set up first)
from nas_restore.nni_layer.space import __all__  # noqa: F401
