"""Data plumbing shared by every dataset: conversation templates and the collator."""
