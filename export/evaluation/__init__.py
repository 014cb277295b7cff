"""What quality is measured on, shared by the export checks and the benchmarks: the real recordings and their
texts (clips), word error rate (wer), and sounds that are not speech (nonspeech). Torch-free."""
