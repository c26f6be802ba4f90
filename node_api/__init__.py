"""airfed.node_api."""
