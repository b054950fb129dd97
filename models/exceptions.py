from riskwire.exceptions import RiskwireError


class ModelError(RiskwireError):
    """A model member could not be built, loaded or run."""
