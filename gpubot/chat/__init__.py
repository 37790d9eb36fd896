"""The chat side: command dispatch, launches, permissions."""
