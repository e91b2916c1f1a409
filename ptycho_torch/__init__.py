"""ptycho_torch: physics-informed neural-network ptychography in PyTorch."""
