"""Instruments: clocks, memory peaks, the NVML sampler, the environment fingerprint and MFU."""
