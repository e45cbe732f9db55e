"""Tests of ppd.robustness."""
