"""Running a detector: runtimes, the detector, devices, the video pipeline and latency."""
