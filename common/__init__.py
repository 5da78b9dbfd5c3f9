"""Plumbing shared by every command: config parsing, run logs and plots, token averaging."""
