"""pvit built-in plugin (placeholder)."""
