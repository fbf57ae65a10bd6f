"""The eval job's metrics, one plug-in module per family (see base.py).

Importing this package registers every family: 'fid' (FID and IS),
'clip' (CLIP score, CLIP R-precision), 'shapes_oracle' (Shapes caption
alignment), 'cmmd' (CMMD), 'fd_dinov2' (FD-DINOv2) and 'prdc' (precision,
recall, density, coverage). config.eval_metrics picks them by name.
"""

from xmcgan_jax.eval.metrics import base
from xmcgan_jax.eval.metrics import clip_score  # Registers 'clip'.
from xmcgan_jax.eval.metrics import cmmd  # Registers 'cmmd'.
from xmcgan_jax.eval.metrics import fd_dinov2  # Registers 'fd_dinov2'.
from xmcgan_jax.eval.metrics import fid_is  # Registers 'fid'.
from xmcgan_jax.eval.metrics import prdc  # Registers 'prdc'.
from xmcgan_jax.eval.metrics import shapes  # Registers 'shapes_oracle'.

EvalInputs = base.EvalInputs
Metric = base.Metric
build = base.build
default_metrics = base.default_metrics
names = base.names
