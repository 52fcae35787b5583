"""What runs in the process that owns a run: the matrix of variants, the run directory, the data
source and the NVML sampler's overhead. It starts a worker per variant (bench.worker) and writes
what each hands back."""
