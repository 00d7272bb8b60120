"""vlmtune's benchmarks: `python -m benchmarks.run` (the suite, one module per measurement) and the stand-alone
`python -m benchmarks.bench_tokenize`, `bench_generation`, `bench_packing`; run from the repository root."""
