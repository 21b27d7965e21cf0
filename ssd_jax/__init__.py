"""ssd-jax: simple self-distillation for code LLMs in JAX/Flax NNX."""

__version__ = "0.1.0"
