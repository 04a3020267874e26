"""dockyard benchmarks: ratios against a baseline taken in the same run, never timed
asserts in tests. Run with `make bench`; results go to benchmarks/results/ (git-ignored)."""
