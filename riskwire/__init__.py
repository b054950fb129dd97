"""riskwire: streaming financial sentiment and per-ticker risk warnings."""

__version__ = "0.1.0"
