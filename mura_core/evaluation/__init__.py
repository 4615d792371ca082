"""Evaluation: metrics with bootstrap intervals, the evaluate run, and its report files (one reader/writer)."""
