"""airfed.dags."""
