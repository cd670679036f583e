"""Conserved quantities of gradient flows (science.md §4). Filled by a later issue."""
