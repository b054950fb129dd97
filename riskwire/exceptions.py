"""One root exception; each package subclasses it with a one-line class."""


class RiskwireError(Exception):
    """Base of every error riskwire raises on purpose."""


class SettingsError(RiskwireError):
    """A setting is missing or invalid; the message names it."""


class InvalidRecord(RiskwireError):
    """A record cannot be decoded or validated; the message is the dead-letter reason."""


class BrokerError(RiskwireError):
    """The embedded broker could not be started or did not answer."""
