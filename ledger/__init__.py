"""airfed.ledger."""
