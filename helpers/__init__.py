"""Helpers behind the workbook: the local LLM simulator, where calls go, runs and their pictures."""
