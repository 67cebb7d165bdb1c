"""Helpers shared by the tests (not collected as tests themselves)."""
