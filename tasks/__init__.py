"""Task suites the embedded dLLM is trained and evaluated on."""
