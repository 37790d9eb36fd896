"""gpubot: rent vast.ai GPUs from Slack without wasting money."""

__version__ = "0.1.0"
