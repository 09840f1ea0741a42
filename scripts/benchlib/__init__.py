"""The parts of scripts/bench.py: servers, load, measurements, report."""
