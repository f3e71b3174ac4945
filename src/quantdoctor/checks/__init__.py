"""Checks: ask the engine for outputs/tensors, compute statistics, return findings.
Checks never run models themselves."""
