"""ssd-jax: simple self-distillation for code LLMs in JAX/Flax NNX."""

from ssd_jax.gpu_targets import default_to_cpu

__version__ = "0.1.0"

default_to_cpu()  # before any JAX backend starts: no CUDA probing where no GPU can be (see gpu_targets)
