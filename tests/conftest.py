"""Shared test setup: every test runs offline (no Hugging Face Hub access)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
