"""Reporting: plots (functions returning matplotlib Figures) and rendered results."""
