"""Headless workflow runner and command line."""
