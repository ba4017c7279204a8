"""The phases: each loads its inputs, runs a pure core and saves its outputs."""
