"""Speed and memory benchmarks against peer engines (`edgemm bench ...`), and the real recordings they use."""
