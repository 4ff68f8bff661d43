"""mixprec: mixed-precision detection training."""
__version__ = '0.1.0'
