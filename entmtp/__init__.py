"""entmtp: entropy-guided tree scheduling for Medusa/Hydra self-speculative decoding."""

__version__ = "0.1.0"
