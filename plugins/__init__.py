"""airfed.plugins."""
