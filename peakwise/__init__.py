"""Peakwise: forecast-driven right-sizing of GPU inference services on Kubernetes."""

__version__ = "0.1.0"
