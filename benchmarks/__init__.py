"""Benchmarks for lwta_zoo: ``python -m benchmarks.run`` (see its docstring)."""
