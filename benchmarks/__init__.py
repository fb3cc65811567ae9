"""Benchmarks: figures the issues ask for, measured as ratios within one run."""
