"""The Peakwise API: pydantic models for the custom resources, and the CRDs generated from them."""
