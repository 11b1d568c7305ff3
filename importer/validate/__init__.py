"""Checking rows: column matching, phone numbers, the per-row rules."""
