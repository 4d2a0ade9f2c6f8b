"""The benchmark (bench/README.md): run from the project root as ``python -m bench.run``."""
