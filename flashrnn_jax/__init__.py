"""flashrnn_jax: head-wise LSTM, GRU, sLSTM and Elman networks for JAX with fused CUDA kernels."""

from flashrnn_jax.api import BACKENDS, flashrnn
from flashrnn_jax.cells import FUNCTIONS
from flashrnn_jax.fused import FusedBackendUnavailableError

__version__ = "0.1.0"

__all__ = ["BACKENDS", "FUNCTIONS", "FusedBackendUnavailableError", "flashrnn", "__version__"]
