"""Runnable jobs: one small module per pipeline stage or paper experiment."""
