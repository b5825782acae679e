"""Generation: endpoint registry, weight loading, conditioning, samplers, video I/O and encoding."""
