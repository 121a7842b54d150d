"""Tools around the product: the benchmark, the load test and publishing to the Hub."""
