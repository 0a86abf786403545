//! Benchmarks (issue 5) live here.
