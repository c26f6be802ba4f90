"""airfed.operators."""
