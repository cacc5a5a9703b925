"""Real-time audio engine: lock-free ring buffers, a model worker, device and file backends."""

from .ring import RingBuffer

__all__ = ["RingBuffer"]
