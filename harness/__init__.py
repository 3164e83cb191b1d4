"""What tests and benchmarks share: launching servers, generating load, describing the machine."""
