"""Runs the whole intent-embed stack locally (`make run`) and in the end-to-end tests."""
